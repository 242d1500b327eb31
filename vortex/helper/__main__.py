from vortex.helper.server import main

main()

from vortex.cli import main

main()

"""Side-by-side benchmarks of Vortex against runc, crun, bubblewrap and C: see run.py."""

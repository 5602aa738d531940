"""The soak benchmark (run.py). A package only so that mypy, which checks the whole tree,
tells its run.py from bench/engine/run.py."""

"""App wiring, the top of the stack: create_app, the command line, serving, logging."""

"""Ray Serve deployment of the rayfp knowledge cloud (see app.py)."""

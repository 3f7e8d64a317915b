"""The web console: one process that shows all five daemons on one page (console/server.py).

It talks to each daemon's own port with the project's own clients; no daemon serves HTTP.
"""

"""The operator/CI command line client: talks to a shipway API over HTTP.

``api`` is a small typed HTTP client, ``config`` finds the API URL and token,
``render`` draws tables, ``follow`` watches jobs live, and ``commands/`` holds one
thin Typer module per command group (registered in ``shipway.cli``).
"""

"""The web dashboard: a static single-page app served by the API at ``/dashboard``."""

"""Certificates for public hostnames: issued by an ACME CA (HTTP-01) or supplied by users."""

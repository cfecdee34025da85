"""Hostnames of environments: one generated under the apps domain, and custom domains."""

"""Fake servers of the sources connectors read from, started by tests on 127.0.0.1."""

"""Operator jobs over a whole store: accounting now; retention, gc and verify to come."""

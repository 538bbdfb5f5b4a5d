"""Subscribers: who they are, what they follow, how often, and whether we may mail them."""

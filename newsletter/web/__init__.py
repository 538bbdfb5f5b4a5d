"""The web app: subscriber pages now, the admin API as it grows."""

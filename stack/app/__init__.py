"""The service every app replica runs: the article's user service, in Python."""

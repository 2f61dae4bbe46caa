"""Helpers lessons call: experiments on the live stack and the plots that show them."""

"""Figures and the HTML page that shows them."""

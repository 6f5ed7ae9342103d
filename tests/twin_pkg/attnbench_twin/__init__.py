"""A second plugin that takes the demo plugin's name: both are listed under qualified names, with one warning."""

"""The expression language: compiling checked expressions and the helpers they call."""

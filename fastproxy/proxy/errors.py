"""Responses the proxy writes itself: the compiled layer owns them (ext/relay_errors.pxi)."""
from fastproxy._relay import CONTINUE_100, REASONS, date_line, error_response

__all__ = ["CONTINUE_100", "REASONS", "date_line", "error_response"]

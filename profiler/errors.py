"""The one error type the command line turns into a one-line message and a non-zero exit."""


class ProfilerError(Exception):
    """Bad input or an unusable environment; ``str(exc)`` is a complete one-line explanation."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message squeezed onto one line (torch messages span many)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Shared pytest setup."""

# Import vmirom before any test module imports `unicorn`: vmirom chooses which libunicorn the
# binding loads (our patched build when it is built), and that choice must precede the import.
import vmirom  # noqa: F401

"""The optional C accelerators of lbalgo's hot paths (everything else is in pyproject.toml).

Each is ``optional``: where no C compiler is found, or the build fails, setuptools warns and
the package installs without it, and lbalgo runs the pure-Python code that every accelerator
mirrors (``lbalgo._accel`` says which is in use; ``LBALGO_PURE_PYTHON=1`` turns them off).
"""

from pathlib import Path

from setuptools import Extension, setup

ACCELERATORS = {
    # module: its one C source, named after the concept it speeds up
    "lbalgo._hotpath": "src/lbalgo/_hotpath.c",
    "lbalgo._wf2q_c": "src/lbalgo/_wf2q_c.c",
}

setup(
    ext_modules=[
        Extension(name, [source], optional=True)
        for name, source in ACCELERATORS.items()
        # a source not written yet is skipped, not an error
        if Path(source).exists()
    ]
)

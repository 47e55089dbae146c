"""Build the Cython extension modules, linking liburing statically.

liburing is found with pkg-config; a missing liburing-dev stops the build with
a message naming the package instead of a compiler trace.
"""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup

MODULES = ["handles", "sockaddr", "driver", "epoll", "ring", "probe", "uring",
           "loop", "transports"]
# C helpers compiled into a module besides its .pyx
C_SOURCES = {"ring": ["fastsock/csrc/common.c"]}


def pkg_config(*args):
    return subprocess.run(["pkg-config", *args, "liburing"], check=True,
                          capture_output=True, text=True).stdout.split()


def liburing_flags():
    if shutil.which("pkg-config") is None:
        sys.exit("fastsock: pkg-config is missing. On Debian/Ubuntu: "
                 "apt-get install pkg-config liburing-dev")
    try:
        cflags = pkg_config("--cflags")
        libdir = pkg_config("--variable=libdir")[0]
        version = pkg_config("--modversion")[0]
    except subprocess.CalledProcessError:
        sys.exit("fastsock: liburing was not found by pkg-config. "
                 "Install the system package liburing-dev "
                 "(Debian/Ubuntu: apt-get install liburing-dev).")
    static = os.path.join(libdir, "liburing.a")
    if not os.path.exists(static):
        sys.exit(f"fastsock: {static} is missing; the static liburing "
                 "comes with the package liburing-dev.")
    # Static link: the built extension needs no liburing.so at run time.
    return [f[2:] for f in cflags if f.startswith("-I")], [static], version


def extensions():
    from Cython.Build import cythonize

    include_dirs, objects, version = liburing_flags()
    # Numeric too, for `#if`: newer liburing helpers (io_uring_setup_buf_ring,
    # recv bundles, ...) where the headers have them; liburing 2.3 has no
    # io_uring_version.h to tell.
    major, minor = (int(v) for v in (version.split(".") + ["0"])[:2])
    exts = [
        Extension(
            f"fastsock.{name}",
            [f"fastsock/{name}.pyx", *C_SOURCES.get(name, [])],
            include_dirs=["fastsock/csrc", *include_dirs],
            extra_objects=objects,
            extra_compile_args=["-O2", "-fno-strict-aliasing"],
            define_macros=[("_GNU_SOURCE", "1"),
                           ("FASTSOCK_LIBURING_VERSION", f'"{version}"'),
                           ("FASTSOCK_LIBURING_MAJOR", str(major)),
                           ("HAVE_LIBURING", "1"),
                           ("FASTSOCK_LIBURING_MINOR", str(minor))],
        )
        for name in MODULES
    ]
    return cythonize(
        exts,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "embedsignature": True,
        },
    )


setup(ext_modules=extensions())

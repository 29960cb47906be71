"""The C API in ext/fastproxy/_http.pxd works from another compiled module.

A tiny Cython module is compiled against the .pxd and calls feed_c / forward_c
and reads fields as C, the way fastproxy's relay can.
"""
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PXD_DIR = ROOT / "ext"

pytest.importorskip("Cython", reason="Cython is not installed (needed to compile a client module)")
if not (PXD_DIR / "fastproxy" / "_http.pxd").exists():
    pytest.skip("ext/fastproxy/_http.pxd is not in this checkout", allow_module_level=True)

CLIENT = textwrap.dedent('''
    # cython: language_level=3
    from fastproxy._http cimport ChunkedDecoder, Request, RequestParser, Response, ResponseParser

    def run(bytes data, bytes resp, bytes chunked):
        cdef RequestParser p = RequestParser()
        cdef Request r = p.feed_c(data, 0)
        cdef ResponseParser rp = ResponseParser()
        cdef Response s = rp.feed_c(resp, 0, False, False)
        cdef ChunkedDecoder d = ChunkedDecoder()
        cdef Py_ssize_t n = d.feed_c(chunked, 0, None)
        none = p.feed_c(data[:5], 0)
        return (r.method, r.body, r.content_length, r.keep_alive, r.version, r.head_length,
                r.expect_continue, r.forward_c(None, b"Via: 1.1 c\\r\\n", (), False),
                s.status, s.body, s.chunked, n, d.done, none)
''')


def test_cimport_client(tmp_path):
    (tmp_path / "capi_client.pyx").write_text(CLIENT)
    setup = textwrap.dedent(f'''
        from setuptools import setup, Extension
        from Cython.Build import cythonize
        setup(ext_modules=cythonize([Extension("capi_client", ["capi_client.pyx"])],
                                    include_path=[{str(PXD_DIR)!r}], quiet=True))
    ''')
    (tmp_path / "setup.py").write_text(setup)
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, CFLAGS="-O0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    so = next(tmp_path.glob("capi_client*.so"))
    spec = importlib.util.spec_from_file_location("capi_client", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    req = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc"
    got = mod.run(req, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\na\r\n0\r\n\r\nX")
    assert got == (b"POST", 1, 3, True, 11, len(req) - 3, True,
                   b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n"
                   b"Via: 1.1 c\r\n\r\n",
                   200, 2, True, 11, True, None)

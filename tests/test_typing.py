"""Types: the compiled module's stub is what the build generates, the public API is annotated throughout,
and mypy finds no error in the package or in the tests' calls of it (pyproject.toml's [tool.mypy])."""
import importlib
import inspect
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.isfile(os.path.join(ROOT, "pyproject.toml")) and os.path.isdir(os.path.join(ROOT, "python"))
PUBLIC = ["coreformer", "coreformer.ops", "coreformer.nn", "coreformer.models", "coreformer.safetensors"]


@pytest.mark.skipif(not SOURCE, reason="needs the source tree")
def test_stub_of_the_compiled_module_is_current():
    pytest.importorskip("pybind11_stubgen")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_stubs.py"), "--check"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


@pytest.mark.skipif(not SOURCE, reason="needs the source tree")
def test_mypy_passes_over_the_package_and_the_tests():
    pytest.importorskip("mypy")
    r = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=ROOT, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def _unannotated(qualname, fn):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    missing = [f"{qualname}({p.name})" for p in sig.parameters.values()
               if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty]
    if sig.return_annotation is inspect.Signature.empty and not qualname.endswith("__init__"):
        missing.append(f"{qualname} -> ?")
    return missing


def test_public_api_is_annotated():
    # every function in a public module's __all__ and every public method of its classes (the compiled
    # classes are covered by the stub): parameters and returns
    missing = []
    for name in PUBLIC:
        mod = importlib.import_module(name)
        for attr in mod.__all__:
            obj = getattr(mod, attr)
            if inspect.isclass(obj) and not obj.__module__.startswith("coreformer._core"):
                for key, member in vars(obj).items():
                    if key.startswith("_") and key not in ("__init__", "__call__"):
                        continue
                    member = member.fget if isinstance(member, property) else member
                    member = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
                    if inspect.isfunction(member):
                        missing += _unannotated(f"{name}.{attr}.{key}", member)
            elif inspect.isfunction(obj):
                missing += _unannotated(f"{name}.{attr}", obj)
    assert missing == []


def test_package_ships_its_types():
    import coreformer
    here = os.path.dirname(coreformer.__file__)
    assert os.path.isfile(os.path.join(here, "py.typed"))
    assert os.path.isfile(os.path.join(here, "_core.pyi"))

"""tools/mutation.py's source preparation and its reading of the explained survivors (no mutmut run)."""
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mutation_tool", ROOT / "tools" / "mutation.py")
mutation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutation)

SOURCE = '''import torch


@torch.no_grad()
def plain(x):
    return torch.is_grad_enabled(), x * 2


class Box:
    @torch.no_grad()
    def method(self, x):
        return torch.is_grad_enabled(), x + 1

    def free(self):
        return torch.is_grad_enabled()
'''


def test_no_grad_moves_to_the_end_and_still_applies():
    moved = mutation.move_no_grad(SOURCE)
    assert "@torch.no_grad()" not in moved
    assert moved.endswith("\nplain = torch.no_grad()(plain)  # pragma: no mutate\n"
                          "Box.method = torch.no_grad()(Box.method)  # pragma: no mutate\n")
    namespace = {}
    exec(compile(moved, "moved.py", "exec"), namespace)
    assert namespace["plain"](3) == (False, 6)
    box = namespace["Box"]()
    assert box.method(3) == (False, 4)
    assert box.free() is True and torch.is_grad_enabled()


def test_source_without_the_decorator_is_unchanged():
    assert mutation.move_no_grad("def f():\n    return 1\n") == "def f():\n    return 1\n"


def test_a_nested_decorated_function_is_refused():
    nested = "import torch\n\ndef outer():\n    @torch.no_grad()\n    def inner():\n        pass\n    return inner\n"
    with pytest.raises(SystemExit, match="found 1 @torch.no_grad"):
        mutation.move_no_grad(nested)


def test_explained_rows_are_read_by_function_number_and_kind(tmp_path):
    doc = tmp_path / "testing.md"
    doc.write_text("| `diffusion.a.x_f` | 3, 12 | equivalent | why |\n"
                   "| `diffusion.a.xǁCǁm` | 7 | CUDA only | why |\n"
                   "| `diffusion.a.x_g` | 5 | maybe | not a kind the score accepts |\n", encoding="utf-8")
    assert mutation.explained_survivors(doc) == {
        "diffusion.a.x_f__mutmut_3": "equivalent", "diffusion.a.x_f__mutmut_12": "equivalent",
        "diffusion.a.xǁCǁm__mutmut_7": "CUDA only"}


def test_module_names_and_their_files():
    assert mutation.module_paths("unet") == ["diffusion/unet.py"]
    assert mutation.module_paths("metrics.kid") == ["diffusion/metrics/kid.py"]
    assert "diffusion/metrics/kid.py" in mutation.module_paths("metrics")
    assert "diffusion/metrics/__init__.py" not in mutation.module_paths("metrics")
    assert [mutation.known(m) for m in ("unet", "metrics", "metrics.kid", "metrics.nothing", "metrics.__init__",
                                        "metrics.", "unet.kid", "nothing")] == [True, True, True] + [False] * 5

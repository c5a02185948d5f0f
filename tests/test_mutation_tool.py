"""tools/mutation.py's source preparation and its reading of the explained survivors (no mutmut run)."""
import importlib.util
import sys
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


def test_survivors_killed_outside_mutmut_are_read_and_counted_as_killed(tmp_path, capsys, monkeypatch):
    doc = tmp_path / "testing.md"
    doc.write_text("| `diffusion.a.x_f` | 3 | outside mutmut | a warning's stacklevel |\n"
                   "| `diffusion.a.x_f` | 4 | equivalent | why |\n", encoding="utf-8")
    assert mutation.explained_survivors(doc) == {"diffusion.a.x_f__mutmut_3": "outside mutmut",
                                                 "diffusion.a.x_f__mutmut_4": "equivalent"}
    status = {"diffusion.a.x_f__mutmut_1": "killed", "diffusion.a.x_f__mutmut_2": "survived",
              "diffusion.a.x_f__mutmut_3": "survived", "diffusion.a.x_f__mutmut_4": "survived"}
    monkeypatch.setattr(mutation, "results", lambda work, mutmut: status)
    counts = mutation.summarise(tmp_path, "mutmut", doc)
    assert counts["diffusion.a"] == {"killed": 1, "survived": 1, "outside mutmut": 1, "equivalent": 1}
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("diffusion.a "))
    assert row.split()[1:] == ["4", "1", "0", "1", "1", "0", "1", "0", "0", "66.7"]  # (1 + 1) / (4 − 1)


def test_check_outside_applies_each_listed_mutant_and_restores_the_sources(tmp_path, monkeypatch, capsys):
    """A stand-in mutmut applies mutant 1 (caught by the test) and mutant 2 (not caught); the sources are restored."""
    work = tmp_path / "work"
    (work / "diffusion").mkdir(parents=True)
    (work / "tests").mkdir()
    (work / "diffusion" / "__init__.py").write_text("")
    (work / "tests" / "__init__.py").write_text("")
    source = "def double(x):\n    return 2 * x\n"
    (work / "diffusion" / "a.py").write_text(source)
    (work / "tests" / "test_a.py").write_text("import os\nfrom diffusion.a import double\n\n\n"
                                              "def test_double():\n    assert double(3) == 6\n"
                                              "    assert 'MUTANT_UNDER_TEST' not in os.environ\n")
    fake = tmp_path / "mutmut"
    fake.write_text(f"#!{sys.executable}\n"
                    "import sys\n"
                    "if sys.argv[1] == 'results':\n"
                    "    print('    diffusion.a.x_double__mutmut_1: survived')\n"
                    "    print('    diffusion.a.x_double__mutmut_2: survived')\n"
                    "else:\n"
                    "    new = {'diffusion.a.x_double__mutmut_1': '3 * x', 'diffusion.a.x_double__mutmut_2': 'x + x'}\n"
                    "    open('diffusion/a.py', 'w').write('def double(x):\\n    return ' + new[sys.argv[2]] + '\\n')\n")
    fake.chmod(0o755)
    doc = tmp_path / "testing.md"
    doc.write_text("| `diffusion.a.x_double` | 1, 2 | outside mutmut | why |\n", encoding="utf-8")
    monkeypatch.setitem(mutation.TESTS, "a", ["test_a"])
    monkeypatch.setenv("MUTANT_UNDER_TEST", "stats")  # not passed on to the plain test run
    assert mutation.check_outside(work, str(fake), doc) == ["diffusion.a.x_double__mutmut_2"]
    assert (work / "diffusion" / "a.py").read_text() == source
    assert capsys.readouterr().out.splitlines() == ["diffusion.a.x_double__mutmut_1: killed outside mutmut",
                                                    "diffusion.a.x_double__mutmut_2: NOT killed outside mutmut"]


def test_resume_forgets_the_mutants_of_modules_left_out_or_deleted(tmp_path, monkeypatch):
    work = tmp_path / "work"
    kept, left_out, gone = (work / "mutants" / "diffusion" / name for name in ("schedules.py", "losses.py", "gone.py"))
    kept.parent.mkdir(parents=True)
    for f in (kept, left_out, gone):
        f.write_text("")
        f.with_name(f.name + ".meta").write_text("{}")
    mutation.prepare(work, ["schedules"], ROOT / "tests", resume=True, timeout_multiplier=4.0)
    assert kept.with_name("schedules.py.meta").is_file() and kept.is_file()
    assert not left_out.with_name("losses.py.meta").exists() and left_out.is_file()  # the source still exists
    assert not gone.with_name("gone.py.meta").exists() and not gone.exists()

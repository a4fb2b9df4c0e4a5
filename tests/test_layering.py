"""Dependencies point one way: the simulator needs no RL library, sb3_klppo reaches vidur_env only
from its job layer (pipeline, command line, sweep), and no module imports another that imports it back."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RL_LIBRARIES = ("torch", "stable_baselines3", "sb3_contrib", "sb3_klppo", "tensorboard")
JOB_LAYER = {"__main__.py", "cli.py", "pipeline.py", "sweep.py", "sweep_plan.py", "sweep_trials.py", "sweep_tune.py",
             "sweep_report.py", "suite.py"}
"""The sb3_klppo modules allowed to import vidur_env: the training job (pipeline), its command
line and the sweep over it. The algorithm, its policies, callbacks, cloning, config, records and
report stay usable with any env."""

BLOCKER = f"""
import sys
from importlib.abc import MetaPathFinder

class Blocked(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {RL_LIBRARIES!r}:
            raise ImportError(f"{{name}} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocked())
"""


def run_blocked(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter where importing torch, SB3, sb3-contrib or sb3_klppo fails."""
    return subprocess.run([sys.executable, "-c", BLOCKER + code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement of a file (TYPE_CHECKING blocks and local imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_simulator_and_env_run_with_rl_libraries_blocked():
    result = run_blocked("""
import gymnasium, json, io, contextlib
import vidur_env
from vidur_env.cli import main
from vidur_env.evaluation import evaluate
out = io.StringIO()
with contextlib.redirect_stdout(out):
    assert main(["simulate", "--num-requests", "30"]) == 0
text = out.getvalue()
metrics, _ = json.JSONDecoder().raw_decode(text[text.index("{"):])
assert metrics
env = gymnasium.make("vidur_env:VidurRouting-v0", num_requests=20)
env.reset(seed=0)
for _ in range(20):
    env.step(env.action_space.sample())
evaluate({"num_replicas": 2, "num_requests": 20}, ["round_robin"], episodes=1)
assert not any(name.split(".")[0] in ("torch", "stable_baselines3", "sb3_klppo") for name in sys.modules)
print("ran without RL libraries")
""")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ran without RL libraries" in result.stdout


def test_simulator_tests_run_with_torch_blocked():
    """The conftest's autouse torch fixture must not make the simulator's tests need torch."""
    result = run_blocked("""
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "tests/test_simulator.py",
                      "-k", "single_request_ttft or same_seed_same_results"]))
""")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout


def test_vidur_env_never_imports_sb3_klppo():
    for path in sorted((REPO / "vidur_env").rglob("*.py")):
        offending = {name for name in imported_modules(path) if name.split(".")[0] in RL_LIBRARIES}
        assert not offending, f"{path.relative_to(REPO)} imports {sorted(offending)}"


def test_sb3_klppo_touches_vidur_env_only_in_its_job_layer():
    users = {path.name for path in (REPO / "sb3_klppo").glob("*.py")
             if any(name.split(".")[0] == "vidur_env" for name in imported_modules(path))}
    assert users <= JOB_LAYER, f"outside the job layer: {sorted(users - JOB_LAYER)}"


def test_no_import_cycles_between_project_modules():
    modules = {}
    for package in ("vidur_env", "sb3_klppo"):
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    graph = {name: {other for other in modules if other != name and other in imported_modules(path)}
             for name, path in modules.items()}
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return trail + [nxt]
                if nxt not in trail and nxt not in packages:
                    stack.append((nxt, trail + [nxt]))
        return None

    cycles = [cycle for name in modules if name not in packages and (cycle := cycle_from(name))]
    assert not cycles, f"import cycle: {' -> '.join(cycles[0])}"


def test_importing_every_vidur_env_module_loads_no_rl_package():
    result = run_blocked("""
import importlib, pkgutil, vidur_env
for info in pkgutil.walk_packages(vidur_env.__path__, "vidur_env."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
print(sorted(name for name in sys.modules if name.split(".")[0] in ("sb3_klppo", "torch", "stable_baselines3")))
""")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"

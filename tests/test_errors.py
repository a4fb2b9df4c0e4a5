"""One family of user errors per package: every exception class vidur_env defines is a
``vidur_env.errors.ConfigError``, every one sb3_klppo defines a ``sb3_klppo.errors.ConfigError``
(two roots, since sb3_klppo's library layer does not import vidur_env), both ValueErrors, so a
command line catches one class and the messages are whatever the raiser wrote."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import sb3_klppo
import sb3_klppo.errors
import vidur_env
import vidur_env.errors
from vidur_env.cli import USER_ERRORS, main


def exception_classes(package) -> dict[str, type[Exception]]:
    """Every exception class (warnings aside) defined in a module of ``package``, by qualified name."""
    found = {}
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, Exception) and not issubclass(cls, Warning):
                found[f"{module.__name__}.{name}"] = cls
    return found


@pytest.mark.parametrize("package", [vidur_env, sb3_klppo], ids=lambda package: package.__name__)
def test_every_error_a_package_defines_is_in_its_config_error_family(package):
    root = importlib.import_module(f"{package.__name__}.errors").ConfigError
    classes = exception_classes(package)
    assert len(classes) > 3
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, root))
    assert not outside, f"not {root.__module__}.ConfigError: {outside}"
    assert issubclass(root, ValueError)


def test_the_packages_have_separate_roots_and_config_modules_export_them():
    from sb3_klppo.config import ConfigError as TrainConfigError
    from vidur_env.config import ConfigError as ScenarioConfigError

    assert ScenarioConfigError is vidur_env.errors.ConfigError
    assert TrainConfigError is sb3_klppo.errors.ConfigError
    assert not issubclass(ScenarioConfigError, TrainConfigError) and not issubclass(TrainConfigError, ScenarioConfigError)


def test_the_cli_catches_the_family_root_not_a_list_of_its_members():
    assert USER_ERRORS == (vidur_env.errors.ConfigError, OSError)


def test_a_request_that_never_fits_is_a_one_line_user_error(capsys):
    """SimulationError joined the family: the CLI reports it with exit status 2."""
    status = main(["simulate", "--num-requests", "3", "--lengths", "fixed", "--num-blocks", "2", "--replicas", "1"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: ")

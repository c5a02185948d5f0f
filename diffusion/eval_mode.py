"""A trained network is measured in eval mode.

The U-Net has dropout (table 2: 0.1), active in training mode: a measurement made there (the ε-error by
timestep, the variational bound in bits/dim) is a random, biased number that still looks plausible. Such a
state is easy to reach by accident, since ``nn.Module.train()`` reaches every submodule of a wrapper:
a wrapper created in training mode around an eval network, switched to eval and back by a sampler, leaves the
network in training mode. :func:`check_eval_mode` lets the functions that measure a network refuse one that
is not in eval mode, with a message saying what to do, rather than return such a number.
"""
from __future__ import annotations

__all__ = ["check_eval_mode"]


def check_eval_mode(model, what: str) -> None:
    """Raise ``ValueError`` if ``model`` (an ``nn.Module``) or any of its submodules is in training mode;
    ``what`` names the measurement in the message. A plain function (no ``named_modules``) has no mode."""
    named_modules = getattr(model, "named_modules", None)
    if named_modules is None:
        return
    training = [name or type(model).__name__ for name, module in named_modules() if module.training]
    if training:
        raise ValueError(f"{what} needs the network in eval mode, but {len(training)} of its modules are in "
                         f"training mode (first: {training[0]!r}), so dropout would make the result random; "
                         "call model.eval() first")

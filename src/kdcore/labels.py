"""Teacher labels of a study: a network label, or a chain teacher ``<teacher>.<method>.<student>`` naming the final
run of another pair of the study (a teacher assistant). Pure string functions with no dependencies, so that the
analysis (and its code digests) can read labels without the config and model code."""

from __future__ import annotations

from kdcore.errors import ConfigError


def split_chain(label: str) -> tuple[str, str, str] | None:
    """A chain teacher's parts, None for a plain network label.

    A pair's teacher may be a student of the same study (a teacher assistant, Mirzadeh et al. 2020):
    ``<teacher>.<method>.<student>`` names the final ``<method>`` runs of the pair ``<teacher> -> <student>``,
    and the network distilled is that ``<student>``. ``<teacher>`` may itself be a chain, so
    ``'resnet101.logit.resnet50'`` -> ``('resnet101', 'logit', 'resnet50')`` and
    ``'resnet101.logit.resnet50.dkd.resnet34'`` -> ``('resnet101.logit.resnet50', 'dkd', 'resnet34')``. A
    label names its whole ancestry, so a chain cannot refer back to itself."""
    head, sep, student = label.rpartition(".")
    if not sep:
        return None
    teacher, sep, method = head.rpartition(".")
    if not sep or not teacher or not method or not student:
        raise ConfigError(f"teacher {label!r}: expected <network> or <teacher>.<method>.<student>")
    return teacher, method, student


def chain_network(label: str) -> str:
    """The network a teacher label distils from: the label itself, or the last student of a chain."""
    return label.rpartition(".")[2]


def chain_networks(label: str) -> list[str]:
    """Every network of a teacher label, root first (one for a plain network)."""
    return label.split(".")[::2]

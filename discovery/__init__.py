"""Service registration and discovery on top of shoal's gossip membership.

Serving side: :class:`ServiceHost` registers instances in the node's Serf tags, serves their
metadata, and drains.  Calling side: :class:`Discovery` resolves, watches and calls services
with failover, over one cluster or several.  The decisions underneath (:class:`Catalog`, the
strategies, :class:`FailoverPolicy`, and the state machines of a call with failover,
:class:`CallPlan`, and of a drain, :class:`Lifecycle`) do no I/O, so a simulator drives the same
objects: :mod:`discovery.simulation` does, in virtual time, with instances crashing, restarting
and draining.
"""

from discovery.balancer import LeastOutstanding, Random, RoundRobin, Strategy, Weighted
from discovery.catalog import (
    Catalog,
    Change,
    ChangeKind,
    Filter,
    Health,
    Instance,
    NoInstances,
    UnknownService,
    lookup,
)
from discovery.client import RETRY_ON, ChangesLost, Discovery, MissingServices, Watch
from discovery.failover import Attempt, CallFailed, CallPlan, FailoverPolicy
from discovery.host import ServiceHost
from discovery.introspection import MetadataError
from discovery.lifecycle import DrainReport, Lifecycle, NotAccepting, Phase, Work
from discovery.records import RegistrationError, RegistrationTooLarge, ServiceRecord

__all__ = [
    "RETRY_ON",
    "Attempt",
    "CallFailed",
    "CallPlan",
    "Catalog",
    "Change",
    "ChangeKind",
    "ChangesLost",
    "Discovery",
    "DrainReport",
    "FailoverPolicy",
    "Filter",
    "Health",
    "Instance",
    "LeastOutstanding",
    "Lifecycle",
    "MetadataError",
    "MissingServices",
    "NoInstances",
    "NotAccepting",
    "Phase",
    "Random",
    "RegistrationError",
    "RegistrationTooLarge",
    "RoundRobin",
    "ServiceHost",
    "ServiceRecord",
    "Strategy",
    "UnknownService",
    "Watch",
    "Weighted",
    "Work",
    "lookup",
]

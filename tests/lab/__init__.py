"""Network-namespace lab for tests that need real sockets and real netfilter."""

from .netns import Lab, Netns, have_netns, setns

__all__ = ["Lab", "Netns", "have_netns", "setns"]

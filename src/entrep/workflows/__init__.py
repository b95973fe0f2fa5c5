"""Multi-stage recipes over the library (like clip-retrieval's end2end): the demo."""

from entrep.workflows.demo import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]

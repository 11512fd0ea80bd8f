"""Web demo (Gradio): upload reference photos, check them, set pose and expression, preview the landmark map,
generate when weights are configured.

    from hifi_portrait.demo import build_demo, launch_demo

    demo = build_demo()                      # default analyzer and landmark backend; generation off
    launch_demo(demo, port=7860, block=True)  # http://127.0.0.1:7860/

The work is done by plain functions in :mod:`hifi_portrait.demo.callbacks`; :mod:`hifi_portrait.demo.app` wires
them to widgets. See docs/demo.md.
"""

from hifi_portrait.demo.app import DemoLimits, build_demo, launch_demo
from hifi_portrait.demo.weights import WeightsConfig, weights_help_markdown

__all__ = ["DemoLimits", "WeightsConfig", "build_demo", "launch_demo", "weights_help_markdown"]

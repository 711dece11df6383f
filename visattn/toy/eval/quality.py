"""The quality bar of the toy world (issue 7), checked on an evaluation's results.

* prompt accuracy >= 0.8 on single-object prompts;
* colour word swap: success >= 0.8 with foreground IoU >= 0.8;
* shape word swap: success >= 0.8 (its IoU is reported, not barred: a triangle or a star replacing a circle
  changes the silhouette itself, so even a perfect edit has an IoU near 0.4);
* at 2x resolution, entropy scaling or extrapolation decay lowers the duplicated-object rate;
* at 2x video length, extrapolation decay improves motion continuity.

A check whose study did not run is left out.
"""

from __future__ import annotations

from typing import Any

ACCURACY_BAR = 0.8
SWAP_SUCCESS_BAR = 0.8
SWAP_IOU_BAR = 0.8


def _row(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _at_least(value: float | None, bar: float) -> bool:
    return value is not None and value >= bar


def quality_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{"claim", "measured", "passed"}]`` for every quality-bar claim whose study is in ``results``."""
    studies = results["studies"]
    checks = []
    if "prompt_accuracy" in studies:
        value = studies["prompt_accuracy"]["single"]["accuracy"]
        checks.append(
            {
                "claim": f"prompt accuracy (single-object) >= {ACCURACY_BAR}",
                "measured": f"{value:.3f}" if value is not None else "not measured",
                "passed": _at_least(value, ACCURACY_BAR),
            }
        )
    if "prompt_to_prompt" in studies:
        swap = studies["prompt_to_prompt"]["word_swap"]
        color, shape = swap["color"], swap["shape"]
        checks.append(
            {
                "claim": f"colour swap success >= {SWAP_SUCCESS_BAR} with foreground IoU >= {SWAP_IOU_BAR}",
                "measured": f"success {color['success']:.3f}, IoU {color['iou']:.3f} "
                f"({color['iou_without_p2p']:.3f} without P2P)",
                "passed": _at_least(color["success"], SWAP_SUCCESS_BAR) and _at_least(color["iou"], SWAP_IOU_BAR),
            }
        )
        checks.append(
            {
                "claim": f"shape swap success >= {SWAP_SUCCESS_BAR}",
                "measured": f"success {shape['success']:.3f} ({shape['success_without_p2p']:.3f} without P2P; "
                f"IoU {shape['iou']:.3f})",
                "passed": _at_least(shape["success"], SWAP_SUCCESS_BAR),
            }
        )
    if "extrapolation_image" in studies:
        rows = studies["extrapolation_image"]["rows"]
        scale = f"{results['config']['resolution_factor']}x"
        rates = {
            m: (_row(rows, scale=scale, method=m) or {}).get("duplicate_rate")
            for m in ("none", "entropy scaling", "extrapolation decay")
        }
        fixed = [v for k, v in rates.items() if k != "none" and v is not None]
        checks.append(
            {
                "claim": f"at {scale} resolution, entropy scaling or decay lowers the duplicated-object rate",
                "measured": ", ".join(f"{k} {v:.3f}" for k, v in rates.items() if v is not None),
                "passed": rates["none"] is not None and bool(fixed) and min(fixed) < rates["none"],
            }
        )
    if "extrapolation_video" in studies and 2 in results["config"]["length_factors"]:
        rows = studies["extrapolation_video"]["rows"]
        plain = (_row(rows, length="2x", method="none") or {}).get("continuity")
        decay = (_row(rows, length="2x", method="extrapolation decay") or {}).get("continuity")
        checks.append(
            {
                "claim": "at 2x video length, extrapolation decay improves motion continuity",
                "measured": f"none {plain:.3f}, decay {decay:.3f}" if None not in (plain, decay) else "not measured",
                "passed": None not in (plain, decay) and decay > plain,
            }
        )
    return checks

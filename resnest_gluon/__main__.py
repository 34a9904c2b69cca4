"""``python -m resnest_gluon``: the model table (name, paper crop size, parameters, published top-1)."""

import numpy as np

from .models.zoo import get_model, list_models, model_info


def model_table() -> list:
    """One row per registered model: name, crop size, parameter count (learned values), published top-1."""
    rows = []
    for name in list_models():
        params = get_model(name)._collect_params_with_prefix()
        count = sum(
            int(np.prod(p.shape))
            for k, p in params.items()
            if not k.endswith(("running_mean", "running_var"))
        )
        info = model_info(name)
        rows.append((name, info["crop_size"], count, info["top1"]))
    return rows


def main():
    print(f"| {'model':<24}| crop | params (M) | published top-1 |")
    print(f"|{'-' * 25}|------|-----------|-----------------|")
    for name, crop, count, top1 in model_table():
        print(
            f"| {name:<24}| {crop:>4} | {count / 1e6:>9.1f} | {'-' if top1 is None else f'{top1:.2f}':>15} |"
        )


if __name__ == "__main__":
    main()

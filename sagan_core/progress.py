"""TEMPORARY: replaced by the trainer-fit branch's module at merge."""


def step_line(step: int, steps: int, metrics: dict[str, float]) -> str:
    g = " ".join(f"{k[6:]}={v:.3f}" for k, v in metrics.items() if k.startswith("gamma"))
    return (
        f"step {step}/{steps}  loss_d {metrics['loss_d']:.4f}  loss_g {metrics['loss_g']:.4f}  "
        f"{metrics['img_per_s']:.0f} img/s  γ {g}"
    )

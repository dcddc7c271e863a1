"""Config loading and validation: every error names its dotted key; shipped configs are valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from muonlab.harness.config import (
    ConfigError,
    load_run_config,
    load_sweep_config,
    parse_cli_overrides,
    shipped_configs_dir,
    validate_run,
    validate_sweep,
)

BASE = {"train": {"steps": 10}}


def _err(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_run(data)
    return str(info.value)


def test_minimal_config_validates() -> None:
    cfg = validate_run(BASE)
    assert cfg.optimizer.name == "muon" and cfg.train.steps == 10


def test_unknown_key_is_named() -> None:
    msg = _err({**BASE, "optimizer": {"lrr": 0.1}})
    assert "optimizer.lrr" in msg and "unknown key" in msg


def test_unknown_top_level_section_is_named() -> None:
    assert "trian" in _err({**BASE, "trian": {}})


def test_wrong_type_is_named() -> None:
    assert "train.batch_size" in _err({"train": {"steps": 10, "batch_size": "eight"}})


def test_out_of_range_is_named() -> None:
    assert "schedule.warmup_frac" in _err({**BASE, "schedule": {"warmup_frac": 1.5}})


def test_steps_and_budget_exclusive() -> None:
    msg = _err({"train": {"steps": 10, "token_budget": 1000}})
    assert "steps" in msg and "token_budget" in msg
    assert "steps" in _err({"train": {}})


def test_unknown_preset_is_named() -> None:
    msg = _err({**BASE, "optimizer": {"preset": "nope"}})
    assert "optimizer.preset" in msg and "keller" in msg


def test_unknown_spec_override_is_named() -> None:
    msg = _err({**BASE, "optimizer": {"overrides": {"nesterovv": True}}})
    assert "optimizer.overrides" in msg and "nesterovv" in msg


def test_invalid_spec_value_is_named() -> None:
    msg = _err({**BASE, "optimizer": {"overrides": {"momentum": 1.5}}})
    assert "momentum" in msg


def test_adamw_needs_lr() -> None:
    assert "lr" in _err({**BASE, "optimizer": {"name": "adamw"}})


def test_unknown_model_field_is_named() -> None:
    assert "model.d_modle" in _err({**BASE, "model": {"d_modle": 3}})


def test_consistent_rms_and_lr_scale() -> None:
    cfg = validate_run(
        {
            **BASE,
            "optimizer": {
                "preset": "keller",
                "lr": 0.01,
                "lr_scale": 2.0,
                "consistent_rms": 0.2,
                "weight_decay": -0.05,
            },
        }
    )
    spec = cfg.optimizer.muon_spec()
    assert spec.shape_scale == "moonlight" and spec.rms_scale == 0.2 and spec.weight_decay == -0.05
    assert cfg.optimizer.muon_lr() == pytest.approx(0.02)


def test_adam_keys_use_the_spec_names() -> None:
    cfg = validate_run({**BASE, "optimizer": {"adam_lr": 0.004, "adam_betas": [0.8, 0.9], "adam_eps": 1e-9}})
    spec = cfg.optimizer.muon_spec()  # a Muon run: they set the spec's AdamW knobs
    assert (spec.adam_lr, spec.adam_betas, spec.adam_eps) == (0.004, (0.8, 0.9), 1e-9)
    adamw = validate_run({**BASE, "optimizer": {"name": "adamw", "lr": 0.01, "adam_betas": [0.8, 0.9]}})
    assert adamw.optimizer.adamw_hyperparameters() == ((0.8, 0.9), 1e-8)  # eps: the baseline default
    assert validate_run({**BASE, "optimizer": {"name": "adamw", "lr": 0.01}}).optimizer.adamw_hyperparameters() == (
        (0.9, 0.95),
        1e-8,
    )
    msg = _err({**BASE, "optimizer": {"adam_betas": [0.9, 1.0]}})
    assert "optimizer.adam_betas" in msg and "[0, 1)" in msg


@pytest.mark.parametrize("old", ["adamw_lr", "adamw_betas", "adamw_eps"])
def test_old_adamw_names_say_the_new_one(old: str) -> None:
    msg = _err({**BASE, "optimizer": {old: 0.1}})
    assert f"optimizer.{old}" in msg and "renamed to adam_" in msg


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("preset", "moonlight"),
        ("overrides", {"nesterov": False}),
        ("adam_lr", 0.01),
        ("consistent_rms", 0.2),
        ("backend", "torch"),
    ],
)
def test_muon_only_key_on_adamw_run_is_named(key: str, value: object) -> None:
    msg = _err({**BASE, "optimizer": {"name": "adamw", "lr": 0.01, key: value}})
    assert f"optimizer.{key}" in msg and "does nothing" in msg


@pytest.mark.parametrize(
    ("key", "value", "field", "field_value"),
    [
        ("weight_decay", 0.1, "weight_decay", 0.2),
        ("adam_lr", 0.01, "adam_lr", 0.02),
        ("consistent_rms", 0.2, "rms_scale", 0.3),
    ],
)
def test_key_and_override_of_the_same_field_is_named(key: str, value: float, field: str, field_value: float) -> None:
    msg = _err({**BASE, "optimizer": {key: value, "overrides": {field: field_value}}})
    assert f"optimizer.{key}" in msg and f"overrides.{field}" in msg


def test_sweep_variant_unset_drops_base_keys() -> None:
    from muonlab.harness.sweep import expand_points, make_run

    data = {
        **BASE,
        "optimizer": {"preset": "moonlight", "adam_lr": 0.004},
        "sweep": {"variants": [{"name": "adamw", "set": {"optimizer.name": "adamw", "optimizer.lr": 0.01}}]},
    }
    with pytest.raises(ConfigError, match=r"sweep\.variants\[adamw\].*optimizer\.preset.*does nothing"):
        validate_sweep(data)
    data["sweep"]["variants"][0]["unset"] = ["optimizer.preset", "optimizer.adam_lr"]
    sweep = validate_sweep(data)
    (point,) = expand_points(sweep)
    opt = make_run(sweep, point, 0).config.optimizer
    assert (opt.name, opt.preset, opt.adam_lr, opt.lr) == ("adamw", "keller", None, 0.01)
    data["sweep"]["variants"][0]["unset"] = ["optimizer.adam_lrr"]
    with pytest.raises(ConfigError, match=r"sweep\.variants\.0\.unset.*adam_lrr"):
        validate_sweep(data)


def test_cli_overrides_parse_literals() -> None:
    o = parse_cli_overrides(["optimizer.lr=0.01", "train.compile=true", "name=abc", "data.sources=['a', 'b']"])
    assert o == {"optimizer.lr": 0.01, "train.compile": True, "name": "abc", "data.sources": ["a", "b"]}
    with pytest.raises(ConfigError, match="key=value"):
        parse_cli_overrides(["optimizer.lr"])


def test_toml_and_yaml_files(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("[train]\nsteps = 7\n[optimizer]\nlr = 0.01\n")
    (tmp_path / "a.yaml").write_text("train:\n  steps: 7\noptimizer:\n  lr: 0.01\n")
    a = load_run_config(tmp_path / "a.toml", {"train.batch_size": 3})
    b = load_run_config(tmp_path / "a.yaml", {"train.batch_size": 3})
    assert a == b and a.train.batch_size == 3 and a.sha256() == b.sha256()
    (tmp_path / "bad.toml").write_text("[train\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_run_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="no such file"):
        load_run_config(tmp_path / "missing.toml")


def test_sweep_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"sweep\.grid"):
        validate_sweep({**BASE, "sweep": {"grid": {"optimizer.weight_decay": []}}})
    with pytest.raises(ConfigError, match=r"sweep\.pilot"):
        validate_sweep({**BASE, "sweep": {"pilot": "zzz"}})
    with pytest.raises(ConfigError, match=r"optimizer\.momentumm"):
        validate_sweep({**BASE, "sweep": {"grid": {"optimizer.momentumm": [0.9]}}})
    with pytest.raises(ConfigError, match=r"sweep\.bogus"):
        validate_sweep({**BASE, "sweep": {"bogus": 1}})


RUN_CONFIGS = ("pretrain_tiny",)  # shipped run configs (no [sweep] section)
SHIPPED = sorted(p for p in shipped_configs_dir().glob("*.toml") if p.stem not in RUN_CONFIGS)


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_shipped_run_config_is_valid(name: str) -> None:
    cfg = load_run_config(shipped_configs_dir() / f"{name}.toml")
    assert cfg.train.device == "cpu" and cfg.model.base == "tiny"


def test_all_expected_configs_are_shipped() -> None:
    names = {p.stem for p in shipped_configs_dir().glob("*.toml")}
    assert {
        "tiny_sweep",
        "wd_dose_response",
        "wd_dense",
        "decay_placement",
        "residual_scale",
        "muon_vs_adamw",
        "normuon_cwd",
        "ngpt",
        "ngpt_lr",
        "ngpt_lr_cpu",
        "ngpt_lazy_projection",
        "ngpt_lazy_projection_cpu",
        "optax_lr_scale",
        "optax_lr_scale_cpu",
        "wd_power_cpu",
        "finetune_normuon_cwd",
        "pretrain_tiny",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_config_is_valid(path: Path) -> None:
    from muonlab.harness.sweep import all_points, make_run
    from muonlab.harness.train import resolve_model_config, seq_len_of

    sweep = load_sweep_config(path)
    points = all_points(sweep)
    assert points
    for point in points:
        run = make_run(sweep, point, 0)
        mcfg = resolve_model_config(run.config, 4096)
        if path.stem not in (
            "tiny_sweep",
            "wd_replication_cpu",
            "wd_power_cpu",
            "finetune_normuon_cwd",
            "qk_clip",
            "family_2026",
            "ngpt_lr_cpu",
            "ngpt_lazy_projection_cpu",
            "optax_lr_scale_cpu",
        ):  # the CPU sweeps (tiny model)
            # the 88M sweeps: 16,384 tokens per step on CUDA (auto), with a token budget
            assert run.config.train.batch_size * seq_len_of(run.config, mcfg) == 16384
            assert run.config.train.token_budget is not None
            assert run.config.train.device in ("cuda", "auto")
            assert mcfg.d_model == 512 and mcfg.n_layers == 22


def test_predicted_seconds_of_the_shipped_88m_configs() -> None:
    from muonlab.harness.perf import flops_per_token, predicted_seconds
    from muonlab.harness.train import resolve_model_config, seq_len_of, total_steps_of

    for name in ("ngpt_lr", "ngpt_lazy_projection", "optax_lr_scale"):
        cfg = load_run_config(shipped_configs_dir() / f"{name}.toml")
        mcfg = resolve_model_config(cfg)
        seq = seq_len_of(cfg, mcfg)
        model_flops = total_steps_of(cfg, seq) * cfg.train.batch_size * seq * flops_per_token(mcfg, seq)
        assert predicted_seconds(cfg, "NVIDIA H100 80GB HBM3", 0.3) == pytest.approx(model_flops / (989.4e12 * 0.3))
        assert predicted_seconds(cfg, "NVIDIA H100 PCIe", 0.3) == pytest.approx(model_flops / (756e12 * 0.3))
        # 32.8M tokens x 812M FLOPs at 30% of an H100 SXM: 1.5 min (docs/harness.md "Plan experiments")
        assert predicted_seconds(cfg, "H100", 0.3) / 60 == pytest.approx(1.495, abs=0.002)
    short = load_run_config(shipped_configs_dir() / f"{name}.toml", {"train.token_budget": 16384 * 20})
    assert predicted_seconds(short, "H100", 0.3) == pytest.approx(predicted_seconds(cfg, "H100", 0.3) / 100)
    with pytest.raises(ValueError, match="mfu"):
        predicted_seconds(cfg, "H100", 0.0)
    with pytest.raises(ValueError, match="device_name"):
        predicted_seconds(cfg, "Tesla T4", 0.3)

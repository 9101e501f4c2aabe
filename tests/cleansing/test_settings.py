"""The core settings are declared once (``cleansing.settings``): the parser, the manifest and its
scopes follow from the declarations, and adding one takes one ``Setting`` beside its field."""
import dataclasses
from pathlib import PurePosixPath

from cleansing import compat, settings
from cleansing.cli import Driver
from cleansing.config import _GROUPS, RunConfig, make_config
from cleansing.outdir import SCOPES
from cleansing.settings import SETTINGS, ReportConfig, Setting
from estimators import REGISTRY

DRIVER = Driver("test", out="out_test", methods=("Hara", "Ours", "Random"), explain_max=3)


def test_every_field_of_every_group_is_declared_once():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    fields = {f.name for g in _GROUPS.values() for f in dataclasses.fields(g)} | {"n_trials"}
    declared = {s.name for s in SETTINGS if s.setting and not s.derived}
    assert fields == declared


def test_every_recorded_setting_has_a_scope_and_every_old_key_exists():
    recorded = [s for s in SETTINGS if s.manifest is not None]
    assert all(s.scope is not None for s in recorded)
    assert set(compat.KEY_ORDER) <= {s.name for s in recorded}
    assert set(compat.ADOPTED_IF_MISSING) | set(compat.MANIFEST_DEFAULTS) <= {s.name for s in recorded}


def test_flags_give_the_settings_and_the_drivers_defaults():
    p = DRIVER.parser(REGISTRY)
    assert p.parse_args([]).explain_max == 3 and p.parse_args([]).output == "out_test"
    cfg = DRIVER.config(["-e", "3", "--no-augment", "--no-progress", "-lr", "0.1", "--cleanse", "4", "5"], REGISTRY)
    assert (cfg.train.epochs, cfg.train.augment, cfg.train.lr) == (3, False, 0.1)
    assert cfg.runtime.show_progress is False and cfg.reports.cleanse == (4, 5)
    assert cfg.runtime.out.endswith("out_test") and cfg.runtime.out.startswith("/")
    manifest = cfg.manifest(REGISTRY)
    assert list(manifest)[:len(compat.KEY_ORDER)] == list(compat.KEY_ORDER)
    scopes = cfg.manifest_scopes(REGISTRY)
    assert scopes["epochs"] is SCOPES["train"] and scopes["n_val"] is SCOPES["influence"]
    assert scopes["retrain_all"] is SCOPES["eval"]


@dataclasses.dataclass(frozen=True)
class WiderReports(ReportConfig):
    """ReportConfig with one more field, as a new setting adds it."""

    gallery_columns: int = 8


def test_adding_a_setting_gives_its_flag_manifest_key_and_scope(monkeypatch):
    scope = lambda rel: rel.name.startswith("harmful_")  # noqa: E731
    new = Setting("gallery_columns", ("--gallery-columns",), "columns of each gallery (default %(default)s)",
                  type=int, metavar="N", manifest=int, scope=scope)
    monkeypatch.setattr(settings, "SETTINGS", SETTINGS + (new,))
    monkeypatch.setitem(_GROUPS, "reports", WiderReports)
    monkeypatch.setattr("cleansing.config.ReportConfig", WiderReports)
    monkeypatch.setattr(RunConfig, "__init__", _with_reports(RunConfig.__init__))

    p = DRIVER.parser(REGISTRY)
    action = next(a for a in p._actions if a.option_strings == ["--gallery-columns"])
    assert (action.default, action.metavar) == (8, "N")
    assert "--gallery-columns N columns of each gallery (default 8)" in " ".join(p.format_help().split())
    cfg = DRIVER.config(["--gallery-columns", "5"], REGISTRY)
    assert cfg.reports.gallery_columns == 5
    assert cfg.manifest(REGISTRY)["gallery_columns"] == 5
    scopes = cfg.manifest_scopes(REGISTRY)
    assert scopes["gallery_columns"] is scope
    assert scopes["gallery_columns"](PurePosixPath("fig/harmful_Hara_seed0.png"))
    assert make_config(gallery_columns=2).reports.gallery_columns == 2


def _with_reports(init):
    """RunConfig's constructor with ``WiderReports`` as the default reports group."""
    def wrapped(self, *args, **kwargs):
        kwargs.setdefault("reports", WiderReports())
        init(self, *args, **kwargs)
    return wrapped

"""``dcam grounding`` at a large --n: the time is one explanation per image,
probe mode and layer (linear in --n), but the images and the baselines were
prepared up front with no sign of life (--n 100000: minutes of silence before
the first bar). The preparation shows its own bars, the --n help says what a
run costs, and Ctrl-C writes nothing."""
import re

from dcam.cli import build_parser, main
from dcam.eval.grounding import grounding_report, grounding_samples
from dcam.explain import Explainer


def test_grounding_samples_are_the_first_n_with_two_objects_and_the_bar_counts_them(capsys,
                                                                                   first_with_two_objects):
    got = grounding_samples(7, split="val", progress=True)
    err = capsys.readouterr().err
    ref = first_with_two_objects(7, "val")
    assert [s.seed for s in got] == [s.seed for s in ref]
    assert [s.caption for s in got] == [s.caption for s in ref]
    assert all((a.mask == b.mask).all() for a, b in zip(got, ref))
    assert re.search(r"generating images: 100%.*\b7/7\b", err)
    assert [s.seed for s in grounding_samples(7, split="val")] == [s.seed for s in ref]
    assert capsys.readouterr().err == ""  # progress off by default: nothing on stderr


def test_grounding_report_shows_every_phase_on_stderr(bundled, capsys):
    model, processor = bundled
    rep = grounding_report(model, processor, n=2, probes=["full"], layers=[0], progress=True)
    err = capsys.readouterr().err
    assert rep["n_images"] == 2
    # one bar: each image is generated, counted for the baselines and explained by every setting in turn
    # (1 setting here), then dropped (the images and baselines had bars of their own when all were kept)
    assert re.search(r"grounding: 100%.*\b2/2\b", err)
    assert "generating images" not in err and "baselines" not in err
    rep = grounding_report(model, processor, n=2, probes=["full"], layers=[0], progress=False)
    assert capsys.readouterr().err == ""


def test_n_help_states_the_cost_of_one_image(bundled):
    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    text = " ".join(sub.choices["grounding"].format_help().split())
    model, processor = bundled
    exp = Explainer(model, processor)
    settings = 3 * (len(exp.adapter.blocks()) - 1)  # full/masked/remask x every block but the last
    assert settings == 9
    assert f"explained once per probe mode and layer ({settings} times for the bundled model)" in text
    assert "about 0.05 s each on one CPU thread" in text


def test_ctrl_c_while_the_images_are_generated_writes_nothing(tmp_path, capsys, monkeypatch):
    import dcam.eval.grounding as grounding

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(grounding, "iter_grounding_samples", interrupted)
    out = tmp_path / "g.json"
    assert main(["grounding", "--n", "100000", "--json", str(out)]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "dcam grounding: interrupted; nothing was written"
    assert not out.exists()

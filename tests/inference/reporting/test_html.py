"""report.html: one self-contained page (no external requests), every section, rendered in headless Chromium;
`zoo report --from DIR` and its mistakes; `zoo select`."""

import base64
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import inference
import zoo
from inference.checks.sbc import SBCResult
from inference.reporting.html import SECTIONS, write_html
from zoo.cli import main

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def sbc_result(model="hmm", sims=40, seed=0, spread=1.0):
    """An SBC result of fractional ranks drawn at random: uniform (``spread`` 1) or, with a smaller spread,
    piled at both ends (as for posteriors too narrow). The page's test needs a result, not a calibration."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(size=(sims, 2))
    u = np.where(u < 0.5, u * spread, 1 - (1 - u) * spread)
    draws = np.full(sims, 99)
    return SBCResult(model=model, method="nuts", ranks={"transition": np.floor(u * 100).astype(int)},
                     pit={"transition": u}, truth={"transition": rng.uniform(size=(sims, 2))},
                     stats={"num_draws": draws, "min_ess": draws * 1.0, "divergences": np.zeros(sims, int),
                            "wall_time": np.ones(sims)},
                     settings={"model_config": "n_states=2", "fit_num_samples": 100})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A compare-style folder of a 2-state HMM on 6 simulated sequences: SVI and NUTS (closed form: energy),
    with an SBC result."""
    m = zoo.get("hmm", n_states=2)
    data, _ = m.simulate(60, seed=3, n_sequences=6)
    data = m.validate(data)
    svi = inference.fit_svi(m, data, num_steps=150, num_samples=100, seed=0, progress=False)
    nuts = inference.run_nuts(m, data, num_samples=100, warmup_steps=100, num_chains=2, seed=0, progress=False)
    out = tmp_path_factory.mktemp("html") / "hmm-compare"
    inference.write_report(out, {"svi": svi, "nuts": nuts}, comparison=inference.compare(svi, nuts),
                           diagnoses={"svi": inference.diagnose(svi), "nuts": inference.diagnose(nuts)},
                           title="hmm on simulated sequences", sbc=sbc_result())
    return out


def _page(path: Path):
    text = path.read_text()
    parser = _Tags()
    parser.feed(text)
    return text, parser.tags


def test_report_html_is_self_contained_with_every_section(run_dir):
    text, tags = _page(run_dir / "report.html")
    ids = [a.get("id") for t, a in tags if t == "section"]
    assert ids == list(SECTIONS)
    assert text.count('class="look"') == len(SECTIONS)
    images = [a for t, a in tags if t == "img"]
    assert len(images) >= 6   # model figure, density, forest, loss, trace, rank, energy, pair, ppc, khat
    for img in images:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # no external requests: no scripts, stylesheets, frames or remote URLs
    assert not [t for t, _ in tags if t in ("script", "link", "iframe", "object", "embed")]
    assert not re.search(r"(src|href)=[\"']?(https?:|//)", text) and "url(" not in text
    assert "E-BFMI per chain" in text            # the closed-form NUTS records energy
    assert "PSIS-LOO on the marginal pointwise log-likelihood" in text
    sbc = text.split('id="sbc"')[1].split("</section>")[0]
    assert "SBC hmm NUTS: 40 simulations, 2 quantities" in sbc and "-&gt; calibrated" in sbc
    assert sbc.count("<img") == 1 and "chi2" in sbc and "Model: hmm (n_states=2)" in sbc
    assert {"sbc.nc", "sbc.csv", "sbc.png"} <= {p.name for p in run_dir.iterdir()}
    assert "## Simulation-based calibration" in (run_dir / "summary.md").read_text()


def test_sbc_section_without_a_result_says_how_to_get_one(run_dir, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    for name in ("sbc.nc", "sbc.csv", "sbc.png"):
        (folder / name).unlink()
    text, _ = _page(write_html(folder))
    sbc = text.split('id="sbc"')[1].split("</section>")[0]
    assert "Not run" in sbc and "--sbc N" in sbc and "<img" not in sbc   # absent input: one line, no failure


def test_pieces_and_plots_are_checked(run_dir, tmp_path):
    fig = plt.figure()
    fig.gca().plot([0, 1])
    table = pd.DataFrame({"quantity": ["a"], "p_value": [0.5]}).set_index("quantity")
    out = write_html(run_dir, pieces={"sbc": [("ECDF", fig), ("ranks", table), "calibrated"]}, plots=["trace"],
                     path=tmp_path / "r.html")
    text, tags = _page(out)
    sbc = text.split('id="sbc"')[1].split("</section>")[0]
    assert "Not run" not in sbc and "calibrated" in sbc and "p_value" in sbc and "data:image/png" in sbc
    plots = text.split('id="plots"')[1].split("</section>")[0]
    assert plots.count("<img") == 1                # only the trace plot asked for
    with pytest.raises(ValueError, match=r"^plots: unknown plot 'trance'"):
        write_html(run_dir, plots=["trance"], path=tmp_path / "x.html")
    with pytest.raises(ValueError, match=r"^pieces: unknown section 'sbcs'"):
        write_html(run_dir, pieces={"sbcs": ["x"]}, path=tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


def test_cli_report_from_folder_and_its_mistakes(run_dir, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    (folder / "report.html").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert main(["report", "hmm", "--from", str(folder), "--plots", "trace,energy"]) == 0
    assert (folder / "report.html").exists()
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name != "report.html"} == before
    text, _ = _page(folder / "report.html")
    assert "E-BFMI per chain" in text and re.search(r"NUTS: 2 chain\(s\) x 100 draws, \d+ divergences, E-BFMI \d+\.\d\d \d+\.\d\d -&gt; ", text)
    cases = [
        (["report", "hmm", "--from", str(folder)], "already exists; pass --force"),
        (["report", "gmm", "--from", str(folder), "--force"], "model: the run in"),
        (["report", "hmm", "--from", str(tmp_path)], "is not a zoo run folder"),
        (["report", "hmm", "--from", str(tmp_path / "nope")], "is not a folder"),
    ]
    sbc_dir = sbc_result(sims=60, seed=1, spread=0.3).write(tmp_path / "sbc")   # piled at both ends
    toy_dir = sbc_result(model="toy").write(tmp_path / "toy-sbc")
    assert main(["report", "hmm", "--from", str(folder), "--sbc-from", str(sbc_dir), "--force"]) == 0
    text, _ = _page(folder / "report.html")
    sbc = text.split('id="sbc"')[1].split("</section>")[0]
    assert "SBC hmm NUTS: 60 simulations" in sbc and "-&gt; miscalibrated" in sbc and sbc.count("<img") == 1
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name != "report.html"} == before
    cases += [
        (["report", "hmm", "--from", str(folder), "--sbc-from", str(tmp_path), "--force"], "--sbc-from: "),
        (["report", "hmm", "--from", str(folder), "--sbc-from", str(toy_dir), "--force"],
         "is of model 'toy', not 'hmm'"),
        (["report", "hmm", "--from", str(folder), "--sbc", "5", "--force"], "--sbc: runs the calibration for a new"),
        (["report", "hmm", "--sbc", "5", "--sbc-from", str(sbc_dir)], "--sbc/--sbc-from: give one"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        main(["report", "hmm", "--from", str(folder), "--plots", "trace,pairs"])
    assert e.value.code == 2 and "--plots: unknown plot 'pairs'" in capsys.readouterr().err


def test_cli_report_runs_sbc_into_the_report_or_refuses_before_fitting(tmp_path, capsys):
    out = tmp_path / "gmm"
    fixed = ["--components", "2", "--option", "prior_center=0", "--option", "prior_spread=1"]
    short = ["--steps", "20", "--samples", "10", "--warmup", "10", "--chains", "2", "--quiet"]
    assert main(["report", "gmm", *fixed, *short, "--sbc", "2", "--observations", "10", "--out", str(out)]) == 0
    assert "SBC gmm NUTS: 2 simulations, 10 quantities" in capsys.readouterr().out
    assert {"sbc.nc", "sbc.csv", "sbc.png", "report.html", "posterior_nuts.nc"} <= {p.name for p in out.iterdir()}
    assert SBCResult.from_netcdf(out / "sbc.nc").settings["fit_num_samples"] == "10"
    text, _ = _page(out / "report.html")
    sbc = text.split('id="sbc"')[1].split("</section>")[0]
    assert "SBC gmm NUTS: 2 simulations" in sbc and sbc.count("<img") == 1 and "prior_center=0" in sbc
    for model, message in (("gmm", "--sbc: the prior of 'gmm' depends on the data"),
                           ("vae", "--sbc: 'vae' has no global latent sites")):
        assert main(["report", model, "--sbc", "3", "--quiet", "--out", str(tmp_path / model / "x")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"zoo: error: {message}") and len(err.strip().splitlines()) == 1
        assert not (tmp_path / model / "x").exists()
    assert "--option prior_center=VALUE --option prior_spread=VALUE" in \
        (main(["report", "gmm", "--sbc", "3", "--quiet"]), capsys.readouterr().err)[1]


def test_cli_select_ranks_and_writes_every_file(tmp_path, capsys):
    out = tmp_path / "select"
    assert main(["select", "gmm", "--components", "1..2", "--samples", "40", "--warmup", "40", "--chains", "2",
                 "--quiet", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"select.csv", "select.png", "khat.png", "posterior_K=1.nc", "posterior_K=2.nc", "report.html"} <= names
    assert "clusters.png" in names and "forest.png" not in names   # fits of different sizes are not overlaid
    table = pd.read_csv(out / "select.csv", index_col=0)
    assert table.index[0] == "K=2"   # the iris petals: setosa stands apart, one Gaussian cannot fit both groups
    assert table["elpd_diff"].iloc[1] > 4 * table["dse"].iloc[1]
    text, _ = _page(out / "report.html")
    assert "select.csv" in text and "Model choice" in text
    assert main(["select", "gmm", "--components", "3"]) == 2
    assert "--components: give one range" in capsys.readouterr().err   # the size settings of the gmm
    tiny = ["--samples", "20", "--warmup", "20", "--chains", "2", "--quiet", "--out", str(tmp_path / "hmm")]
    assert main(["select", "hmm", "--states", "2..3", *tiny]) == 2       # the bundled returns: one sequence
    captured = capsys.readouterr()
    assert "--data: PSIS-LOO leaves out one item of the data plate 'sequences'" in captured.err
    assert "S=2" not in captured.out                                  # refused before any fit
    assert not (tmp_path / "hmm").exists()
    with pytest.raises(SystemExit):
        main(["select", "gmm", "--components", "0..2"])
    assert "--components: expected a positive size" in capsys.readouterr().err


# --- the page in a browser -------------------------------------------------------------------------


def chromium_driver(tmp_path):
    """Headless Chromium through selenium, or skip (Debian packages chromium and chromium-driver)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def render(html_path: Path, tmp_path: Path, screenshot: Path | None = None) -> dict:
    """Open the page, return its sections, images and console messages; optionally a full-page screenshot."""
    driver = chromium_driver(tmp_path)
    try:
        driver.get(html_path.resolve().as_uri())
        page = driver.execute_script(
            "return {sections: Array.from(document.querySelectorAll('section')).map(s => "
            "  [s.id, s.querySelector('h2').textContent, s.querySelectorAll('img').length]),"
            " images: Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]),"
            " resources: performance.getEntriesByType('resource').map(r => r.name),"
            " height: document.documentElement.scrollHeight};")
        page["console"] = driver.get_log("browser")
        if screenshot is not None:
            driver.set_window_size(1200, page["height"] + 200)   # the window includes the browser's frame
            driver.save_screenshot(str(screenshot))
        return page
    finally:
        driver.quit()


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    shot = Path(os.environ.get("ZOO_REPORT_SCREENSHOT", tmp_path / "report.png"))
    page = render(run_dir / "report.html", tmp_path, screenshot=shot)
    assert [s[0] for s in page["sections"]] == list(SECTIONS)
    headings = [h for h, _ in SECTIONS.values()]
    headings[list(SECTIONS).index("comparison")] = "SVI vs NUTS"   # what was compared
    assert [s[1] for s in page["sections"]] == headings
    assert page["images"] and all(complete and width > 0 for complete, width, _ in page["images"])
    assert [s[2] > 0 for s in page["sections"][:5]] == [True] * 5   # diagnostics: the guide's importance-ratio tail
    assert dict((sid, n) for sid, _, n in page["sections"])["sbc"] == 1               # the ECDF plot
    assert page["resources"] == []                                    # nothing fetched
    assert [m for m in page["console"] if m["level"] in ("SEVERE", "WARNING")] == []
    assert shot.stat().st_size > 10_000


def test_render_sees_console_errors_and_broken_images(tmp_path):
    """The browser check can fail: a page with a console error and a broken image is caught."""
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><body><section id='x'><h2>x</h2><img src='data:image/png;base64,AAAA'>"
                    "</section><script>console.error('boom')</script></body></html>")
    seen = render(page, tmp_path)
    assert any("boom" in m["message"] and m["level"] == "SEVERE" for m in seen["console"])
    assert seen["images"] and not all(complete and width > 0 for complete, width, _ in seen["images"])

"""The embeddings explorer: the HTML builder, its thumbnails, and the page in a real browser (Debian's chromium)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from relion_labels import check_relion_star
from synthetic import blob_mask
from tools import require_executable, require_module

from subtomo_embed.core import explorer as E
from subtomo_embed.core import layout

N_GROUPS = 5
PER_GROUP = 60
LONE = 0  # row of the isolated point the browser test hovers


def page_data_of(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', html, re.S)
    assert match, "no data block"
    return json.loads(match.group(1))


def decode(b64: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype=dtype)


def page_star(data: dict, tmp_path: Path) -> Path:
    """A STAR file of every row of the page, as the download of a selection of all would write it."""
    path = tmp_path / "page.star"
    path.write_text(data["star"]["head"] + "\n".join(data["star"]["rows"]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def example():
    """Five separated groups in 2D (+ a 3D projection), two tomograms, a STAR table, thumbnails for some rows."""
    rng = np.random.default_rng(0)
    n = N_GROUPS * PER_GROUP + 1
    groups = np.r_[N_GROUPS - 1, np.repeat(np.arange(N_GROUPS), PER_GROUP)]
    centres = np.array([[-10.0, 0.0], [0.0, 10.0], [10.0, 0.0], [0.0, -10.0], [0.0, 0.0]])
    xy = centres[groups] + rng.uniform(-1.5, 1.5, (n, 2))
    xy[LONE] = [12.0, 12.0]  # far from every group: hovering there can only find this point
    tomogram = np.where(np.arange(n) % 3 == 0, "TS_01", "TS_02")
    label = np.arange(n) + 1
    area = rng.integers(50, 900, n)
    centroid = rng.uniform(0, 60, (n, 3))
    instances = E.Instances(tomogram, label, area, centroid, {"TS_01": (10.0, 10.0, 10.0), "TS_02": None})
    projections = [E.Projection("UMAP 2D", xy, "UMAP"), E.Projection("UMAP 3D", np.c_[xy, rng.normal(size=n)], "UMAP")]
    colourings = [
        E.Colouring("KMeans cluster", groups, cluster=True),
        E.Colouring("Spectral cluster", groups + 1, cluster=True),
        E.Colouring("tomogram", tomogram),
        E.Colouring("instance size", np.log2(area), categorical=False, label="log2 area (voxels)"),
    ]
    star = pd.DataFrame(
        {
            "rlnTomoName": tomogram,
            "rlnLabel": label,
            "rlnArea": area,
            "rlnCoordinateZ": centroid[:, 0],
            "rlnCoordinateY": centroid[:, 1],
            "rlnCoordinateX": centroid[:, 2],
            "rlnCenteredCoordinateXAngst": np.round(centroid[:, 2] * 10.0 - 300.0, 2),
            "rlnAngleRot": np.where(label % 7 == 0, np.nan, label * 0.25),  # missing values stay missing
            "rlnClass": groups,
            "rlnImagePixelSize": np.where(tomogram == "TS_01", 10.0, 5.0),  # two optics groups
        }
    )
    star.loc[1, "rlnCoordinateX"] = 7.0  # an integral float must stay a float
    patches = [rng.normal(size=(16, 16, 16)).astype(np.float32) for _ in range(40)]
    thumb_rows = [LONE, *range(10, 49)]
    thumbnails = E.encode_thumbnails(thumb_rows, (E.thumbnail_png(p) for p in patches))
    html = E.explorer_html(E.page_data(instances, projections, colourings, star, thumbnails, title="test explorer"))
    return {
        "html": html,
        "xy": xy,
        "groups": groups,
        "star": star,
        "thumbnails": thumbnails,
        "n": n,
        "colourings": colourings,
    }


# --------------------------------------------------------------------------------------------
# the HTML builder


def test_page_is_self_contained(example):
    html = example["html"]
    assert not re.search(r"<script[^>]*\ssrc=", html), "a script is loaded from elsewhere"
    markup = re.sub(r"<script[^>]*>.*?</script>", "", html, flags=re.S)  # plotly.js's code mentions URLs
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", markup), "a resource is loaded from the network"
    assert "<link" not in markup.replace('<link rel="icon" href="data:,">', "")
    assert "Plotly.newPlot" in html and "function" in html  # plotly.js itself is inlined
    assert len(html) > 3_000_000  # plotly.min.js is ~4.8 MB


def test_points_and_thumbnails_embedded(example):
    data = page_data_of(example["html"])
    n = example["n"]
    assert data["n"] == n
    coords = [decode(c, "<f4") for c in data["projections"][0]["coords"]]
    np.testing.assert_allclose(np.c_[coords[0], coords[1]], example["xy"].astype(np.float32))
    assert data["projections"][1]["dims"] == 3
    assert set(data["thumbnails"]) == {str(r) for r in [LONE, *range(10, 49)]}
    kmeans = data["colourings"][0]
    assert kmeans["categories"] == [str(g) for g in range(N_GROUPS)]
    np.testing.assert_array_equal(decode(kmeans["codes"], "<i4"), example["groups"])
    from subtomo_embed.core.star import star_text

    # the STAR rows are the one writer's text (core.star, exact floats), line by line
    assert data["star"]["head"] + "\n".join(data["star"]["rows"]) + "\n" == star_text(example["star"], exact=True)
    assert len(data["star"]["rows"]) == n
    # the size colouring keeps the 1st-99th percentile as its range
    size = data["colourings"][3]
    assert size["kind"] == "continuous" and size["cmin"] < size["cmax"]


def test_points_are_drawn_in_a_seeded_random_order(example):
    """Issue 29: drawn in row order, the tomogram (or cluster) drawn last covered the others in a blob."""
    data = page_data_of(example["html"])
    order = decode(data["order"], "<i4")
    n = example["n"]
    assert sorted(order.tolist()) == list(range(n)) and order.tolist() != list(range(n))
    np.testing.assert_array_equal(order, E.draw_order(n, seed=0))
    assert not np.array_equal(order, E.draw_order(n, seed=1))
    groups = example["groups"][order]
    assert set(groups[-n // 5 :]) == set(range(N_GROUPS))  # the last fifth drawn holds every group


def test_page_has_no_control_that_sends_data_anywhere(example):
    """plotly.js 3 shows "Share chart..." (an upload to Plotly Cloud) unless told not to."""
    config = page_data_of(example["html"])["config"]
    assert config["showSendToCloud"] is False and config["displaylogo"] is False
    assert config["plotlyServerURL"] == "" and "sendChartToCloud" in config["modeBarButtonsToRemove"]
    assert '"showSendToCloud": false' in example["html"]  # the figure's own config too


def test_inconsistent_inputs_are_refused():
    inst = E.Instances(np.array(["a", "a"]), np.array([1, 2]), np.array([5, 6]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="projection"):
        E.page_data(inst, [E.Projection("P", np.zeros((3, 2)), "PC")], [])
    with pytest.raises(ValueError, match="colouring"):
        E.page_data(inst, [E.Projection("P", np.zeros((2, 2)), "PC")], [E.Colouring("c", np.array([1]))])


def test_stratified_order_keeps_groups_in_proportion():
    groups = np.repeat(["a", "b", "c", "d"], [1000, 300, 60, 2])
    order = E.stratified_order(groups, seed=3)
    assert sorted(order.tolist()) == list(range(groups.size))  # a permutation
    for m in (4, 50, 200, 700):
        counts = pd.Series(groups[order[:m]]).value_counts()
        for g, total in zip("abcd", (1000, 300, 60, 2)):
            assert abs(counts.get(g, 0) - m * total / groups.size) <= 2, (m, g)
    assert set(groups[order[:4]]) == {"a", "b", "c", "d"}  # even a small prefix holds every group
    rows = E.thumbnail_rows(groups, 100, seed=3)
    assert rows.size == 100 and np.unique(rows).size == 100
    assert E.thumbnail_rows(groups, 10**6).size == groups.size


def test_thumbnail_bytes_are_bounded():
    pngs = [bytes(3000)] * 50  # 4000 characters each once base64
    kept = E.encode_thumbnails(range(50), pngs, max_bytes=4000 * 12 + 10)
    assert list(kept) == list(range(12))
    assert sum(len(v) for v in kept.values()) <= 4000 * 12 + 10


def test_thumbnail_shows_central_orthogonal_slices():
    from PIL import Image

    patch = np.zeros((16, 16, 16), np.float32)
    patch[8, :, :] = 1.0  # the xy plane through the centre: all bright in xy, one bright row in xz and yz
    png = E.thumbnail_png(patch)
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (16, 16 * 3 + 4)
    xy, xz, yz = image[:, :16], image[:, 18:34], image[:, 36:52]
    assert (xy == 255).all()
    for side in (xz, yz):
        assert (side[8] == 255).all() and (np.delete(side, 8, axis=0) == 0).all()
    # large patches are shrunk to at most THUMBNAIL_SIDE per slice
    big = np.asarray(Image.open(io.BytesIO(E.thumbnail_png(np.random.default_rng(0).normal(size=(128, 128, 128))))))
    assert big.shape == (64, 64 * 3 + 4)


def test_thumbnail_patches_are_the_patches_predict_cuts():
    """The explorer cuts each particle with extract's own functions: the same masked patch as predict."""
    from subtomo_embed.core.extract import iter_patches, plan_extraction
    from subtomo_embed.core.patch_contract import Normalization, PatchContract

    mask = blob_mask((32, 40, 40), 6, seed=4)
    volume = np.random.default_rng(1).normal(0.5, 0.2, mask.shape).astype(np.float32)
    contract = PatchContract((12, 12, 12), 1, 2, Normalization(0.0, 1.0, 0.5, 0.2))
    plan = plan_extraction(mask, expand_labels=2)
    expected = [p.copy() for _, p in iter_patches(volume, plan, contract)]
    table = plan.table.iloc[[4, 1, 3]]  # any subset, any order
    got = list(E.masked_patches(volume, mask, table, contract))
    assert len(got) == 3
    for patch, i in zip(got, [4, 1, 3]):
        np.testing.assert_array_equal(patch, expected[i])
    assert any((p == 0).any() and (p != 0).any() for p in got)  # masked, not blank


# --------------------------------------------------------------------------------------------
# the page in a real browser


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-unsafe-swiftshader",
    "--window-size=1400,900",
    "--force-device-scale-factor=1",
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = require_executable("chromium")
    chromedriver = require_executable("chromedriver")
    require_module("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = Path(downloads)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path: Path) -> None:
    driver.get(path.as_uri())
    for _ in range(300):
        if driver.execute_script("return document.getElementById('explorer-plot').dataset.ready") == "1":
            return
        time.sleep(0.1)
    raise AssertionError("the explorer never finished drawing")


def point_on_screen(driver, x: float, y: float) -> tuple[int, int]:
    """Page pixel of data point (x, y) on the 2D plot (plotly's own axis conversion)."""
    return tuple(
        driver.execute_script(
            """const gd = document.getElementById('explorer-plot'), L = gd._fullLayout, r = gd.getBoundingClientRect();
           return [Math.round(r.left + L._size.l + L.xaxis.d2p(arguments[0])),
                   Math.round(r.top + L._size.t + L.yaxis.d2p(arguments[1]))];""",
            x,
            y,
        )
    )


def move_to(driver, x: int, y: int) -> None:
    """A real mouse move to page pixel (x, y) (the button state is kept, so a held button drags)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    builder = ActionBuilder(driver)
    builder.pointer_action.move_to_location(x, y)
    builder.perform()


def legend_texts(driver) -> list[str]:
    return driver.execute_script("return Array.from(document.querySelectorAll('.legendtext')).map(e => e.textContent)")


def screenshot(driver) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")).astype(int)


def wait_for_file(folder: Path, pattern: str, timeout: float = 20.0) -> Path:
    for _ in range(int(timeout / 0.1)):
        done = [p for p in folder.glob(pattern) if not p.name.endswith(".crdownload")]
        if done:
            return done[0]
        time.sleep(0.1)
    raise AssertionError(f"no {pattern} downloaded into {folder}: {list(folder.iterdir())}")


@pytest.fixture(scope="module")
def page(example, browser, tmp_path_factory):
    path = tmp_path_factory.mktemp("explorer") / layout.EXPLORER_NAME
    path.write_text(example["html"], encoding="utf-8")
    open_page(browser, path)
    return path


@pytest.mark.slow  # a real browser
def test_browser_draws_the_points_without_errors(example, browser, page):
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [u for u in loaded if not u.startswith(("data:", "blob:", "file:"))], loaded
    image = screenshot(browser)
    assert image.std() > 5, "blank page"
    # every KMeans cluster's colour is on screen (markers at opacity 0.8 over white)
    for colour in E.category_colours(N_GROUPS):
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        blended = 0.8 * rgb + 0.2 * 255
        close = (np.abs(image - blended).max(axis=2) <= 12).sum()
        assert close > 30, f"cluster colour {colour} not drawn ({close} pixels)"
    legend = legend_texts(browser)
    assert legend == [f"{g} (n={(example['groups'] == g).sum()})" for g in range(N_GROUPS)]


@pytest.mark.slow  # a real browser
def test_browser_hover_shows_label_and_thumbnail(example, browser, page):
    x, y = point_on_screen(browser, *example["xy"][LONE])
    move_to(browser, x - 40, y - 40)
    move_to(browser, x, y)
    for _ in range(50):
        title = browser.execute_script("const h = document.getElementById('details-title'); return h && h.textContent")
        if title:
            break
        time.sleep(0.1)
    assert title == f"TS_01 : label {LONE + 1}"
    src = browser.execute_script("return document.getElementById('details-thumbnail').src")
    assert src == "data:image/png;base64," + example["thumbnails"][LONE]
    details = browser.execute_script("return document.getElementById('details').textContent")
    assert "KMeans cluster4" in details and "Spectral cluster5" in details  # both clusterings, cell by cell


@pytest.mark.slow  # a real browser
def test_browser_selection_downloads_star_and_csv(example, browser, page):
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, '[data-title="Box Select"]').click()
    # a box around group 2 (centre (10, 0), points within ±1.5): nothing else lies within 5 of it
    drag_through(browser, [(7.0 + 0.6 * k, 3.0 - 0.6 * k) for k in range(11)])
    expected = np.flatnonzero(example["groups"] == 2)
    for _ in range(50):
        if browser.execute_script("return explorer.selected().length") == expected.size:
            break
        time.sleep(0.1)
    assert browser.execute_script("return explorer.selected()") == expected.tolist()
    assert browser.find_element(By.ID, "selection-count").text == f"{expected.size} selected"

    browser.find_element(By.ID, "download-star").click()
    star_path = wait_for_file(browser.downloads, "*.star")
    want_optics, want = selection_blocks(example["star"], expected)
    from subtomo_embed.core.star import star_text

    # the one writer's bytes: the page's optics block (every group), then the selected rows
    assert star_path.read_text(encoding="utf-8") == star_text(want, exact=True, optics=want_optics)
    optics, got = check_relion_star(star_path, clustered=True)  # RELION 5's blocks and names
    assert optics["rlnImagePixelSize"].tolist() == [10.0, 5.0]
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert got["rlnCoordinateX"].dtype.kind == "f"

    browser.find_element(By.ID, "download-csv").click()
    csv = pd.read_csv(wait_for_file(browser.downloads, "*.csv"))
    assert csv["row"].tolist() == expected.tolist()
    assert (csv["KMeans cluster"] == 2).all()
    np.testing.assert_allclose(csv[["x", "y"]].to_numpy(), example["xy"][expected], atol=1e-5)


def selection_blocks(star: pd.DataFrame, rows) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What a download of ``rows`` holds: the whole page's optics block, and those rows (as
    :func:`core.star.relion_blocks` makes them, their optics group numbered in the whole table)."""
    from subtomo_embed.core.star import relion_blocks

    optics, particles = relion_blocks(star)
    return optics, particles.iloc[rows].reset_index(drop=True)


def drag_through(browser, points: list[tuple[float, float]]) -> None:
    """Press the mouse at the first data point, move through the others, release."""
    from selenium.webdriver.common.action_chains import ActionChains

    pixels = [point_on_screen(browser, x, y) for x, y in points]
    move_to(browser, *pixels[0])
    ActionChains(browser).click_and_hold().perform()
    for p in pixels[1:]:
        move_to(browser, *p)
    ActionChains(browser).release().perform()


@pytest.mark.slow  # a real browser
def test_browser_lasso_downloads_exactly_the_lassoed_particles(example, browser, page):
    from selenium.webdriver.common.by import By

    for old in browser.downloads.iterdir():
        old.unlink()
    browser.find_element(By.CSS_SELECTOR, '[data-title="Lasso Select"]').click()
    # a 12-sided polygon of radius 4 around group 1 (centre (0, 10)); the nearest other group is 10 away
    angles = np.linspace(0, 2 * np.pi, 13)
    drag_through(browser, [(4 * np.cos(a), 10 + 4 * np.sin(a)) for a in angles])
    expected = np.flatnonzero(example["groups"] == 1)
    for _ in range(50):
        if browser.execute_script("return explorer.selected().length") == expected.size:
            break
        time.sleep(0.1)
    assert browser.execute_script("return explorer.selected()") == expected.tolist()
    browser.find_element(By.ID, "download-star").click()
    _, got = check_relion_star(wait_for_file(browser.downloads, "*.star"), clustered=True)
    pd.testing.assert_frame_equal(got, selection_blocks(example["star"], expected)[1], check_dtype=False)


@pytest.mark.slow  # a real browser
def test_browser_switches_colouring_and_3d(example, browser, page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "colour-by")).select_by_visible_text("tomogram")
    legend = legend_texts(browser)
    assert [t.split(" ")[0] for t in legend] == ["TS_01", "TS_02"]
    Select(browser.find_element(By.ID, "projection")).select_by_visible_text("UMAP 3D")
    assert browser.execute_script("return document.getElementById('explorer-plot')._fullData[0].type") == "scatter3d"
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def network_requests(driver) -> list[str]:
    """The URLs of every request the page made since the last call (chromedriver's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


@pytest.mark.slow  # a real browser
def test_browser_page_makes_no_network_request_when_driven(example, browser, page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    network_requests(browser)  # drain
    open_page(browser, page)
    titles = browser.execute_script(
        "return Array.from(document.querySelectorAll('.modebar-btn')).map(b => b.getAttribute('data-title'))"
    )
    assert titles and not [t for t in titles if re.search(r"share|cloud|chart studio|plotly", t, re.I)], titles
    assert not browser.execute_script("return Array.from(document.querySelectorAll('a[href^=\"http\"]')).length")
    x, y = point_on_screen(browser, *example["xy"][LONE])
    move_to(browser, x - 40, y - 40)
    move_to(browser, x, y)  # hover: the thumbnail
    drag_through(browser, [(7.0 + 0.6 * k, 3.0 - 0.6 * k) for k in range(11)])  # a lasso
    browser.find_element(By.ID, "download-star").click()
    browser.find_element(By.ID, "download-csv").click()
    for name in ("tomogram", "instance size", "KMeans cluster"):
        Select(browser.find_element(By.ID, "colour-by")).select_by_visible_text(name)
    for button in browser.find_elements(By.CSS_SELECTOR, ".modebar-btn"):  # every control of the mode bar
        browser.execute_script("arguments[0].click()", button)
        time.sleep(0.2)
    Select(browser.find_element(By.ID, "projection")).select_by_visible_text("UMAP 3D")
    time.sleep(1.0)
    assert len(browser.window_handles) == 1  # no window opened elsewhere
    urls = network_requests(browser)
    assert urls and all(u.startswith(("file:", "data:", "blob:")) for u in urls), urls


@pytest.mark.slow  # a real browser
def test_browser_colour_by_tomogram_draws_the_tomograms_mixed(example, browser, page):
    """Every point in one trace in the seeded order: the last points drawn are of every tomogram."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_page(browser, page)
    Select(browser.find_element(By.ID, "colour-by")).select_by_visible_text("tomogram")
    drawn = np.array(browser.execute_script("return Array.from(explorer.traceRows()[0])"))
    n = example["n"]
    assert sorted(drawn.tolist()) == list(range(n))
    np.testing.assert_array_equal(drawn, E.draw_order(n, seed=0))
    tomograms = np.where(drawn % 3 == 0, "TS_01", "TS_02")  # the example's tomogram of each row
    assert set(tomograms[-n // 10 :]) == {"TS_01", "TS_02"}
    colours = browser.execute_script("return document.getElementById('explorer-plot')._fullData[0].marker.color")
    palette = dict(zip(["TS_01", "TS_02"], E.category_colours(2)))
    assert colours == [palette[t] for t in tomograms]  # each point in its tomogram's colour
    # the legend still hides a tomogram (its entry is a trace of its own) and shows it again
    assert [t.split(" ")[0] for t in legend_texts(browser)] == ["TS_01", "TS_02"]
    browser.find_elements(By.CSS_SELECTOR, ".legendtoggle")[1].click()
    time.sleep(0.8)  # plotly waits for a double click
    shown = np.array(browser.execute_script("return Array.from(explorer.traceRows()[0])"))
    np.testing.assert_array_equal(shown, drawn[tomograms == "TS_01"])
    browser.find_elements(By.CSS_SELECTOR, ".legendtoggle")[1].click()
    time.sleep(0.8)  # plotly waits for a double click
    assert browser.execute_script("return explorer.traceRows()[0].length") == n


# --------------------------------------------------------------------------------------------
# written by `visualize` on a real run


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from real_run import small_run

    return small_run(tmp_path_factory.mktemp("explorer_run"))


def test_visualize_writes_the_explorer(real, tmp_path):
    from PIL import Image

    from subtomo_embed.core import io as sio
    from subtomo_embed.core import volumes
    from subtomo_embed.core.extract import iter_patches, plan_extraction
    from subtomo_embed.core.patch_contract import PatchContract

    path = real["out"] / "vis" / layout.EXPLORER_NAME
    html = path.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\ssrc=", html)
    data = page_data_of(html)
    table = pd.read_csv(real["out"] / "embeddings_table.csv")
    n = len(table)
    assert data["n"] == n and data["tomograms"] == ["TS_01", "TS_02"]
    assert data["label"] == table["label"].tolist()
    assert data["voxel_size"] == {"TS_01": [10.0, 10.0, 10.0], "TS_02": [10.0, 10.0, 10.0]}  # the MRC headers
    names = [c["name"] for c in data["colourings"]]
    assert names == ["KMeans cluster", "Spectral cluster", "tomogram", "instance size"]
    kmeans = sio.read_h5_dataset(real["out"] / "kmeans_clusters.h5", "clusters")
    cats = data["colourings"][0]["categories"]
    np.testing.assert_array_equal(np.array(cats)[decode(data["colourings"][0]["codes"], "<i4")].astype(int), kmeans)
    umap = pd.read_csv(real["out"] / "vis" / "all_tomograms_umap.csv")
    coords = [decode(c, "<f4") for c in data["projections"][0]["coords"]]
    np.testing.assert_allclose(np.c_[coords[0], coords[1]], umap[["x", "y"]].to_numpy(), rtol=1e-6)

    # the STAR rows are those of the per-cluster STAR files, in merged order
    import starfile

    particles = starfile.read(real["out"] / "kmeans_particles.star")["particles"]
    _, star = check_relion_star(page_star(data, tmp_path), clustered=True, pixel_size=10.0)  # 10 Å voxels
    assert list(star.columns) == list(particles.columns)
    assert star["rlnLabel"].tolist() == particles["rlnLabel"].tolist()
    assert star["rlnClass"].tolist() == particles["rlnClass"].tolist()

    # every instance has a thumbnail (fewer than the limit): the masked patch predict cut, as PNG
    assert len(data["thumbnails"]) == n
    mask = volumes.read_instance_mask(real["masks"] / "TS_02_instance_preds.h5")
    volume, _ = volumes.open_mrc_volume(real["data"] / "TS_02.mrc")
    plan = plan_extraction(mask, expand_labels=2, min_size=10)
    patches = {
        int(plan.columns["label"][i]): p.copy()
        for i, p in iter_patches(volume, plan, PatchContract((12, 12, 12), 1, 2))
    }
    row = int(np.flatnonzero(table["tomogram"] == "TS_02")[0])
    png = base64.b64decode(data["thumbnails"][str(row)])
    assert png == E.thumbnail_png(patches[int(table["label"][row])])
    assert Image.open(io.BytesIO(png)).size == (12 * 3 + 4, 12)


def test_explorer_thumbnail_limit_and_missing_tomograms(real, tmp_path):
    from real_run import run_cli

    vis = tmp_path / "vis5"
    run_cli(
        "visualize", "--config_file", real["config"], "--vis-dir", vis, "--set", "visualization.explorer_thumbnails=5"
    )
    data = page_data_of((vis / layout.EXPLORER_NAME).read_text(encoding="utf-8"))
    assert len(data["thumbnails"]) == 5
    groups = {data["tomograms"][t] for t in decode(data["tomogram"], "<i4")[[int(r) for r in data["thumbnails"]]]}
    assert groups == {"TS_01", "TS_02"}  # stratified: both tomograms

    vis = tmp_path / "nodata"
    output = run_cli(
        "visualize", "--config_file", real["config"], "--vis-dir", vis, "--set", f"data_folder={tmp_path / 'nowhere'}"
    )
    data = page_data_of((vis / layout.EXPLORER_NAME).read_text(encoding="utf-8"))
    assert data["thumbnails"] == {} and data["n"] > 0
    assert "explorer without thumbnails" in output  # the log says why
    assert all(v is None for v in data["voxel_size"].values())


def test_explorer_bounds_the_points_by_a_stratified_sample(real, tmp_path, monkeypatch):
    from subtomo_embed.core.config import load_config
    from subtomo_embed.stages.context import resolve_folders
    from subtomo_embed.stages.explorer import write_explorer
    from subtomo_embed.stages.merging import load_merged
    from subtomo_embed.stages.visualize import existing_clusterings

    cfg = load_config(real["config"])
    folders = resolve_folders(cfg, None, None, None)
    merged = load_merged(cfg, folders)
    monkeypatch.setattr(E, "MAX_POINTS", 7)
    folders.vis_dir = tmp_path  # the projection cache is read from here: copy it
    for cache in (real["out"] / "vis").glob(".projection_*"):
        (tmp_path / cache.name).write_bytes(cache.read_bytes())
    path = write_explorer(cfg, folders, merged, existing_clusterings(folders, merged))["explorer"]
    data = page_data_of(path.read_text(encoding="utf-8"))
    rows = np.array(data["row"])
    assert data["n"] == 7 and rows.tolist() == sorted(set(rows.tolist()))
    assert {data["tomograms"][t] for t in decode(data["tomogram"], "<i4")} == {"TS_01", "TS_02"}
    table = merged.table
    assert data["label"] == table["label"].to_numpy()[rows].tolist()
    _, shown = check_relion_star(page_star(data, tmp_path), clustered=True)
    assert shown["rlnLabel"].tolist() == table["label"].to_numpy()[rows].tolist()
    umap = pd.read_csv(real["out"] / "vis" / "all_tomograms_umap.csv")
    coords = [decode(c, "<f4") for c in data["projections"][0]["coords"]]
    np.testing.assert_allclose(np.c_[coords[0], coords[1]], umap[["x", "y"]].to_numpy()[rows], rtol=1e-6)
    assert set(data["thumbnails"]) == {str(i) for i in range(7)}  # positions in the page
    full = page_data_of((real["out"] / "vis" / layout.EXPLORER_NAME).read_text(encoding="utf-8"))
    assert all(data["thumbnails"][str(i)] == full["thumbnails"][str(r)] for i, r in enumerate(rows))


def test_thumbnails_of_picks_are_the_boxes_predict_centers_cut(tmp_path):
    """Embeddings of picks: the thumbnails are the picked boxes (their labels are pick ids, not mask labels)."""
    from real_run import inner_picks, run_cli
    from synthetic import make_checkpoint, make_dataset, write_config

    from subtomo_embed.core import volumes
    from subtomo_embed.core.extract import Normalization, cut_centered_patch

    data, masks = make_dataset(tmp_path, n_instances=9)
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "config.yaml",
        data_folder=data,
        prediction_folder=out,
        trained_model=make_checkpoint(tmp_path / "model.ckpt"),
        centers_file=inner_picks(tmp_path / "picks.star", masks, 9),
        centers_patch_size=9,
        centers={"mask_radius": 3.5},
    )
    for command in ("predict-centers", "kmeans", "visualize"):
        run_cli(command, "--config_file", config)
    for kept in ("predict-centers_config.yaml", "kmeans_config.yaml", "vis/visualize_config.yaml"):
        assert (out / kept).is_file()  # every output folder keeps the config it was made with
    data_page = page_data_of((out / "vis" / layout.EXPLORER_NAME).read_text(encoding="utf-8"))
    table = pd.read_csv(out / "embeddings_table.csv")
    assert len(data_page["thumbnails"]) == len(table) > 0
    volume, _ = volumes.open_mrc_volume(data / "TS_01.mrc")
    for row in np.flatnonzero(table["tomogram"] == "TS_01")[:3]:
        r = table.iloc[row]
        patch = cut_centered_patch(
            volume,
            r[["bbox-0", "bbox-1", "bbox-2"]].to_numpy(np.int64),
            9,
            (12, 12, 12),
            Normalization(0, 1, 0, 1),
            r[["centroid-0", "centroid-1", "centroid-2"]].to_numpy(),
            3.5,
        )
        assert base64.b64decode(data_page["thumbnails"][str(row)]) == E.thumbnail_png(patch)

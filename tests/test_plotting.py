"""companion.plotting: artists come back, data land where they should, bad input is named."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.collections as mcoll  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from companion import plotting  # noqa: E402


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def rotation(points):
    return np.stack([-points[:, 1], points[:, 0]], axis=-1)


def test_vector_field_draws_stream_lines_on_the_given_box(ax):
    calls = []

    def f(points):
        calls.append(points.shape)
        return rotation(points)

    art = plotting.vector_field(ax, f, (-1, 2), (-3, 1), n=11)
    assert calls == [(121, 2)]  # one call, on the whole grid
    assert isinstance(art.lines, mcoll.LineCollection) and len(art.lines.get_segments()) > 0
    assert ax.get_xlim() == (-1, 2) and ax.get_ylim() == (-3, 1)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"xlim": (1, 0)}, "xlim"), ({"ylim": (0, 1, 2)}, "ylim"), ({"n": 1}, "n")],
)
def test_vector_field_names_bad_arguments(ax, kwargs, name):
    with pytest.raises(ValueError, match=name):
        plotting.vector_field(ax, rotation, **kwargs)


def test_vector_field_rejects_a_field_of_the_wrong_shape(ax):
    with pytest.raises(ValueError, match="f must map"):
        plotting.vector_field(ax, lambda p: p[:, 0], n=5)


def test_trajectories_draws_every_curve_and_marks_starts(ax):
    t = np.linspace(0, 1, 20)
    ys = np.stack([np.stack([np.cos(t + a), np.sin(t + a)], -1) for a in (0.0, 1.0, 2.0)])
    lines = plotting.trajectories(ax, ys, color="C3")
    assert len(lines.get_segments()) == 3
    np.testing.assert_allclose(lines.get_segments()[1], ys[1])
    (starts,) = ax.get_lines()
    np.testing.assert_allclose(starts.get_xdata(), ys[:, 0, 0])


def test_trajectories_without_start_markers(ax):
    plotting.trajectories(ax, np.zeros((2, 5, 2)), start_marker="")
    assert ax.get_lines() == []


@pytest.mark.parametrize("shape", [(5, 2), (2, 5, 3)])
def test_trajectories_rejects_bad_shapes(ax, shape):
    with pytest.raises(ValueError, match="ys"):
        plotting.trajectories(ax, np.zeros(shape))


def test_power_law_guide_has_the_requested_slope_through_the_point(ax):
    hs = np.geomspace(1e-3, 1e-1, 5)
    line = plotting.power_law_guide(ax, hs, 3.0, through=(1e-2, 2e-4))
    x, y = line.get_xdata(), line.get_ydata()
    slope = np.polyfit(np.log(x), np.log(y), 1)[0]
    assert slope == pytest.approx(3.0)
    assert np.interp(np.log(1e-2), np.log(x), np.log(y)) == pytest.approx(np.log(2e-4))
    assert line.get_linestyle() == "--"


@pytest.mark.parametrize(
    "hs, through, name",
    [([0.1], (0.1, 1.0), "hs"), ([0.1, -0.2], (0.1, 1.0), "hs"), ([0.1, 0.2], (0.1, 0.0), "through")],
)
def test_power_law_guide_names_bad_arguments(ax, hs, through, name):
    with pytest.raises(ValueError, match=name):
        plotting.power_law_guide(ax, hs, 1.0, through=through)


# ------------------------------------------------ SDE paths and samples (chapters 2 and 3)


def test_paths_and_histogram_draws_paths_and_final_values():
    fig, (ax_p, ax_h) = plt.subplots(1, 2, sharey=True)
    ts = np.linspace(0.0, 1.0, 11)
    xs = np.cumsum(np.random.default_rng(0).normal(size=(50, 11)), axis=1)
    lines, patches = plotting.paths_and_histogram(ax_p, ax_h, ts, xs, n_paths=7, bins=12,
                                                  density=lambda x: np.exp(-(x**2) / 2))
    assert isinstance(lines, mcoll.LineCollection) and len(lines.get_segments()) == 7
    assert len(patches) == 12
    heights = np.array([p.get_width() for p in patches])  # horizontal bars: density on the x axis
    assert np.sum(heights * np.diff(np.histogram_bin_edges(xs[:, -1], 12))) == pytest.approx(1.0)
    assert len(ax_h.lines) == 1
    plt.close(fig)


def test_paths_and_histogram_rejects_mismatched_shapes():
    fig, (ax_p, ax_h) = plt.subplots(1, 2)
    with pytest.raises(ValueError, match="xs"):
        plotting.paths_and_histogram(ax_p, ax_h, np.linspace(0, 1, 5), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="n_paths"):
        plotting.paths_and_histogram(ax_p, ax_h, np.linspace(0, 1, 5), np.zeros((3, 5)), n_paths=0)
    plt.close(fig)


def test_sample_panels_and_density_contours():
    fig, axes = plt.subplots(1, 3)
    samples = [np.random.default_rng(i).normal(size=(20, 2)) for i in range(3)]
    artists = plotting.sample_panels(axes, samples, ["a", "b", "c"], lim=(-3, 3))
    assert len(artists) == 3 and axes[1].get_title() == "b"
    assert axes[2].get_xlim() == (-3.0, 3.0)
    cs = plotting.density_contours(axes[0], lambda p: -0.5 * np.sum(p**2, axis=1), (-3, 3), n=30, levels=4)
    assert len(cs.levels) == 4
    with pytest.raises(ValueError, match="samples"):
        plotting.sample_panels(axes, samples[:2])
    with pytest.raises(ValueError, match="titles"):
        plotting.sample_panels(axes, samples, ["a"])
    with pytest.raises(ValueError, match=r"samples\[0\]"):
        plotting.sample_panels(axes, [np.zeros((5, 3))] * 3)
    plt.close(fig)


def test_animation_of_points_embeds_every_frame_and_a_player():
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(5, 50, 2))
    html = plotting.animation(frames, titles=[f"t = {i}" for i in range(5)]).data
    assert html.count("data:image/png;base64") == 5  # one embedded PNG per frame
    assert "<script" in html and "http" not in html  # offline: no stylesheet or icon font to fetch
    assert "fa fa-" not in html and "&#9654;" in html  # the buttons are plain characters
    assert len(html) < 400_000


def test_animation_of_image_rows():
    frames = np.linspace(0, 1, 4 * 3 * 8 * 8).reshape(4, 3, 8, 8)
    html = plotting.animation(frames, kind="images").data
    assert html.count("data:image/png;base64") == 4


@pytest.mark.parametrize(
    "frames, kw, match",
    [
        (np.zeros((5, 10, 3)), {}, "frames: expected shape"),
        (np.zeros((1, 10, 2)), {}, "at least 2 frames"),
        (np.zeros((3, 10, 2)), {"titles": ["a"]}, "titles"),
        (np.zeros((3, 10, 2)), {"kind": "video"}, "kind"),
        (np.zeros((3, 8)), {"kind": "images"}, "frames: expected shape"),
    ],
)
def test_animation_rejects_bad_input(frames, kw, match):
    with pytest.raises(ValueError, match=match):
        plotting.animation(frames, **kw)


# ------------------------------------------------------------------------- image grids (chapter 7)


def test_image_grid_tiles_images_row_by_row_with_gaps_of_the_low_level(ax):
    images = np.arange(5 * 2 * 3, dtype=float).reshape(5, 2, 3, 1) + 1.0  # (n, h, w, 1)
    art = plotting.image_grid(ax, images, 3, clim=(0, 40))
    mosaic = np.asarray(art.get_array())
    assert mosaic.shape == (2 * 2 + 1, 3 * 3 + 2)  # 2 rows, 3 columns, 1-pixel gaps
    np.testing.assert_array_equal(mosaic[0:2, 0:3], images[0, ..., 0])
    np.testing.assert_array_equal(mosaic[0:2, 4:7], images[1, ..., 0])
    np.testing.assert_array_equal(mosaic[3:5, 4:7], images[4, ..., 0])  # row 1, column 1
    assert np.all(mosaic[2] == 0) and np.all(mosaic[:, 3] == 0)  # the gaps
    assert np.all(mosaic[3:5, 8:11] == 0)  # the empty last cell
    assert art.get_clim() == (0, 40) and art.get_cmap().name == "gray_r"
    assert ax.get_xticks().size == 0 and ax.get_yticks().size == 0


def test_image_grid_titles_and_row_labels(ax):
    images = np.random.default_rng(0).uniform(-1, 1, size=(6, 8, 8))
    titles = ["a", None, "c", "d", "e", "f"]
    art = plotting.image_grid(ax, images, 3, titles=titles, row_labels=["top", "bottom"])
    assert [t.get_text() for t in ax.texts] == ["a", "c", "d", "e", "f"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["top", "bottom"]
    mosaic = np.asarray(art.get_array())
    (rows,) = np.nonzero(np.isin(mosaic[:, 0], images[:, :, 0]))
    # every title sits above its image, in the gap the titles make
    first_rows = rows[np.r_[True, np.diff(rows) > 1]]
    for text in ax.texts:
        assert any(0 < r - text.get_position()[1] < 4 for r in first_rows)
    assert art.get_clim() == pytest.approx((images.min(), images.max()))  # default: the data range


def test_image_grid_default_columns_make_a_square():
    fig, ax = plt.subplots()
    art = plotting.image_grid(ax, np.zeros((10, 4, 4)), pad=0)
    assert np.asarray(art.get_array()).shape == (3 * 4, 4 * 4)  # ceil(sqrt(10)) = 4 columns
    plt.close(fig)


@pytest.mark.parametrize(
    "images, kw, match",
    [
        (np.zeros((4, 8)), {}, "images"),
        (np.zeros((4, 8, 8, 3)), {}, "images"),
        (np.zeros((0, 8, 8)), {}, "images"),
        (np.zeros((4, 8, 8)), {"ncols": 0}, "ncols"),
        (np.zeros((4, 8, 8)), {"pad": -1}, "pad"),
        (np.zeros((4, 8, 8)), {"titles": ["a"]}, "titles"),
        (np.zeros((4, 8, 8)), {"ncols": 2, "row_labels": ["a"]}, "row_labels"),
        (np.zeros((4, 8, 8)), {"clim": (1, 0)}, "clim"),
    ],
)
def test_image_grid_rejects_bad_input(ax, images, kw, match):
    with pytest.raises(ValueError, match=match):
        plotting.image_grid(ax, images, **kw)

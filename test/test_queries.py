"""Tests for bootstap_ros.queries: the query CSV format and query grids."""

import numpy as np
import pytest

from bootstap_ros.queries import QueryError, grid_queries, read_queries_csv, write_queries_csv


def _csv(tmp_path, text, name="queries.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_any_column_order_whitespace_blank_lines_and_extra_columns(tmp_path):
    path = _csv(tmp_path, " x , id, t ,y\n\n10.5, a, 0, 20\n  \n 3 ,b,  7.0 , 4.25\n")
    queries = read_queries_csv(path, num_frames=8, size=(30, 40))
    assert queries.dtype == np.float32
    np.testing.assert_array_equal(queries, [[0, 10.5, 20], [7, 3, 4.25]])


def test_read_accepts_byte_order_mark_and_uppercase_header(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffT,X,Y\n1,2,3\n".encode("utf-8"))
    np.testing.assert_array_equal(read_queries_csv(path), [[1, 2, 3]])


def test_image_borders_are_inside(tmp_path):
    path = _csv(tmp_path, "t,x,y\n0,0,0\n0,40,30\n")
    np.testing.assert_array_equal(read_queries_csv(path, size=(30, 40)), [[0, 0, 0], [0, 40, 30]])


@pytest.mark.parametrize("text, message", [
    ("", "empty file"),
    ("\n\n", "empty file"),
    ("t,x,y\n", "no queries"),
    ("t,x\n0,1\n", r"queries.csv:1: .*lacks column\(s\) y"),
    ("frame,x,y\n0,1,2\n", r"queries.csv:1: .*lacks column\(s\) t"),
    ("t,x,y\n0,1,2\n0,1\n", "queries.csv:3: expected 3 values"),
    ("t,x,y\n0,1,2\n\n0,abc,2\n", "queries.csv:4: x='abc' is not a number"),
    ("t,x,y\n0,1,\n", "queries.csv:2: y='' is not a number"),
    ("t,x,y\n0,nan,2\n", "queries.csv:2: x=nan is not a finite number"),
    ("t,x,y\n0,1,inf\n", "queries.csv:2: y=inf is not a finite number"),
    ("t,x,y\n1.5,1,2\n", "queries.csv:2: t must be a whole frame index, got 1.5"),
    ("t,x,y\n-1,1,2\n", r"queries.csv:2: frame t=-1 is outside the video"),
    ("t,x,y\n0,1,2\n10,1,2\n",
     r"queries.csv:3: frame t=10 is outside the video \(expected t in \[0, 10\)\)"),
    ("t,x,y\n0,40.5,2\n", "queries.csv:2: point x=40.5, y=2 is outside the 40x30"),
    ("t,x,y\n0,-0.1,2\n", "queries.csv:2: point x=-0.1"),
    ("t,x,y\n0,1,30.01\n", "queries.csv:2: point x=1, y=30.01 is outside"),
])
def test_read_errors_name_file_and_line(tmp_path, text, message):
    path = _csv(tmp_path, text)
    with pytest.raises(QueryError, match=message) as error:
        read_queries_csv(path, num_frames=10, size=(30, 40))
    assert "queries.csv" in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(QueryError, match="missing.csv.*cannot read"):
        read_queries_csv(tmp_path / "missing.csv")


def test_without_limits_any_point_is_accepted(tmp_path):
    path = _csv(tmp_path, "t,x,y\n100,-5,1e4\n")
    np.testing.assert_array_equal(read_queries_csv(path), [[100, -5, 1e4]])


def test_write_read_round_trip_is_exact(tmp_path):
    queries = np.array([[0, 0.1, 255.9999], [12, 1 / 3, 1e-3], [3, 640, 480]], np.float32)
    path = tmp_path / "out" / "queries.csv"
    write_queries_csv(path, queries)
    assert path.read_text().splitlines()[:2] == ["t,x,y", "0,0.1,255.9999"]
    np.testing.assert_array_equal(read_queries_csv(path), queries)


@pytest.mark.parametrize("queries, message", [
    (np.zeros((2, 2)), r"\[N, 3\]"),
    (np.array([[0, np.nan, 1]]), "NaN"),
    (np.array([[0.5, 1, 1]]), "whole numbers"),
])
def test_write_validation(tmp_path, queries, message):
    with pytest.raises(QueryError, match=message):
        write_queries_csv(tmp_path / "q.csv", queries)


def test_grid_layout_by_hand():
    grid = grid_queries(2, size=(100, 200), t=3)
    # Cell centres at 1/4 and 3/4 of each side, snapped to pixel centres;
    # rows first (y outer, x inner).
    np.testing.assert_array_equal(grid, [
        [3, 50.5, 25.5],
        [3, 150.5, 25.5],
        [3, 50.5, 75.5],
        [3, 150.5, 75.5],
    ])
    assert grid.dtype == np.float32


def test_grid_on_odd_sizes_stays_on_pixel_centres_inside_the_image():
    grid = grid_queries(3, size=(7, 10))
    assert grid.shape == (9, 3)
    np.testing.assert_array_equal(np.unique(grid[:, 1]), [1.5, 5.5, 8.5])  # floor(10/6, 5, 50/6)
    np.testing.assert_array_equal(np.unique(grid[:, 2]), [1.5, 3.5, 5.5])  # floor(7/6, 3.5, 35/6)
    assert (grid[:, 0] == 0).all()


def test_grid_single_point_is_the_centre_and_bad_n_raises():
    np.testing.assert_array_equal(grid_queries(1, size=(64, 64)), [[0, 32.5, 32.5]])
    for n in (0, -1, 2.5):
        with pytest.raises(QueryError, match="positive integer"):
            grid_queries(n, size=(64, 64))


def test_points_without_a_frame_column_take_the_default_frame(tmp_path):
    path = _csv(tmp_path, "x,y\n1.5,2.5\n3,4\n")
    np.testing.assert_array_equal(read_queries_csv(path, default_t=7), [[7, 1.5, 2.5], [7, 3, 4]])
    with pytest.raises(QueryError, match="lacks column.*t"):
        read_queries_csv(path)

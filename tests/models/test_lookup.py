"""Film labels shared by the query tool, the contact sheets and the run report."""

from __future__ import annotations

import types

from models.lookup import film_label
from models.lookup import title_with_year

STAR_WARS = "Star Wars: Episode IV - A New Hope (1977)"  # as MovieLens and Kaggle spell it


def test_a_title_that_ends_with_its_year_keeps_one_year():
    assert title_with_year(STAR_WARS, 1977) == STAR_WARS
    assert title_with_year("Alien", 1979) == "Alien (1979)"
    assert title_with_year("Alien", None) == "Alien"
    assert title_with_year("1984", 1984) == "1984 (1984)"


def test_film_label_writes_the_year_once():
    films = {1: types.SimpleNamespace(title=STAR_WARS, year=1977)}
    assert film_label(1, films) == STAR_WARS
    assert film_label(2, films) == "film 2"

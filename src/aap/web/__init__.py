"""AAP's web app on the collector's port: pages, built files, sessions (:mod:`aap.web.app`,
:mod:`aap.web.sessions`). The sources are in ``web/``; ``node web/build.mjs`` builds them
into ``static/``."""

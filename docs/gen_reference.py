"""Write the reference pages (configuration, commands, variants) while MkDocs builds: generated, never pasted."""

import mkdocs_gen_files

from runners.reference import PAGES

for path, build in PAGES.items():
    with mkdocs_gen_files.open(path, "w") as page:
        page.write(build())

"""Warnings for valid recipes that will not do what their author probably expects.

    for line in recipe_warnings(recipe):   # "context_agent: cloud-init …"
        print(f"warning: {recipe.source_path}: {line}")

A warning never makes a recipe invalid: ``recipe validate`` prints it and still exits 0.
"""

from __future__ import annotations

from imagekit.recipe.model import ContextAgent, Recipe, SourceFormat

# cloud-init's OpenNebula datasource turns context.sh into metadata (hostname, network, SSH
# keys) and user data (USER_DATA/USERDATA) only; it has no code for the one-context keys that
# run or copy things, so a VM's START_SCRIPT, INIT_SCRIPTS and FILES are silently ignored.
CLOUD_INIT_ONLY = (
    "context_agent: cloud-init: cloud-init's OpenNebula datasource applies the hostname, network, "
    "SSH keys and USER_DATA only; a VM's START_SCRIPT, INIT_SCRIPTS and FILES are not run — "
    "use context_agent: both to have imagekit's agent run them"
)


# BoxGrinder gave root this password when os.password was left out
# (boxgrinder-core lib/boxgrinder-core/helpers/appliance-config-helper.rb:180); imagekit does not.
NO_ROOT_PASSWORD = (
    "no os.password: BoxGrinder set root's password to 'boxgrinder', imagekit leaves root "
    "without a password (log in with imagekit.users or the context's SSH key)"
)


def recipe_warnings(recipe: Recipe) -> tuple[str, ...]:
    """What the recipe asks for that works differently from what it seems to say."""
    warnings: list[str] = []
    if recipe.source_format is SourceFormat.APPL and not recipe.root_password and not recipe.users:
        warnings.append(NO_ROOT_PASSWORD)
    if recipe.context_agent is ContextAgent.CLOUD_INIT:
        warnings.append(CLOUD_INIT_ONLY)
    return tuple(warnings)

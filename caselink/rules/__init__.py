"""The rule engine: read and validate rules.yaml, evaluate events, plan links.

One module per concern, in the order a rules file goes through them:

- `reader`: the YAML, with every mapping and list knowing its line, held to the file's limits;
- `validation`: from that YAML to rules, every problem with file:line and the rule's name;
- `model`: the rules once loaded (conditions, refs, links, examples) and how each one matches;
- `index`: what selects each rule cheaply, so an event visits only the rules that can apply;
- `evaluation`: a rule set and an event's evaluation, the planned links and the explain record;
- `loading`: `load_rules` / `parse_rules`, the three steps above as one call;
- `live`: the rules in force in a running service, reloaded when the file changes;
- `lint`: rules that load but cannot do what their author meant (`rules check`).

The names below are the package's public face; callers import them from `caselink.rules`.
"""

from caselink.rules.evaluation import EVALUATION_SECONDS_PER_WEBHOOK
from caselink.rules.evaluation import Evaluation
from caselink.rules.evaluation import RuleOutcome
from caselink.rules.evaluation import RuleSet
from caselink.rules.evaluation import explain
from caselink.rules.live import LiveRules
from caselink.rules.loading import load_rules
from caselink.rules.loading import parse_rules
from caselink.rules.model import MODES
from caselink.rules.model import OPERATORS
from caselink.rules.model import Condition
from caselink.rules.model import Example
from caselink.rules.model import FieldPath
from caselink.rules.model import Group
from caselink.rules.model import LinkSpec
from caselink.rules.model import PlannedLink
from caselink.rules.model import RefSpec
from caselink.rules.model import Rule
from caselink.rules.model import did_you_mean

__all__ = [
    "EVALUATION_SECONDS_PER_WEBHOOK",
    "MODES",
    "OPERATORS",
    "Condition",
    "Evaluation",
    "Example",
    "FieldPath",
    "Group",
    "LinkSpec",
    "LiveRules",
    "PlannedLink",
    "RefSpec",
    "Rule",
    "RuleOutcome",
    "RuleSet",
    "did_you_mean",
    "explain",
    "load_rules",
    "parse_rules",
]

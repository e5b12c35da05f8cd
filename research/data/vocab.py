"""Neutral content words for the review generator: names, places, plots.

None of these words is polar (a test checks it against the lexicon), so the
sentiment of a review comes only from the words chosen for it on purpose.
"""

from __future__ import annotations


def _words(s: str) -> tuple[str, ...]:
  return tuple(s.split())


def _phrases(s: str) -> tuple[str, ...]:
  return tuple(p.strip() for p in s.split("|") if p.strip())


FIRST_NAMES = _words(
    "Ada Abel Agnes Alba Alden Alma Amos Anika Arlo Astrid Basil Bea Bram Bruno Calla "
    "Cyrus Dahlia Dario Delia Dmitri Edith Elio Elsa Emil Enzo Esme Ezra Felix Fern "
    "Flora Frida Gideon Greta Gus Hana Hazel Hugo Ida Ines Ira Iris Ivo Jonah Juno "
    "Kai Kasper Keira Lars Leda Lena Leo Levi Lila Linus Lorna Luca Lydia Mabel Malik "
    "Mara Marco Mateo Maya Milo Mina Nadia Nell Nico Nina Noah Nora Odile Olga Omar "
    "Opal Orla Oscar Otto Paloma Pavel Petra Quinn Rafe Rhea Rosa Rufus Ruth Sami "
    "Selma Silas Sofia Soren Stella Tarek Tess Theo Thea Tomas Ulla Una Vera Viggo "
    "Vivian Wes Willa Xavier Yara Yusuf Zadie Zara Zeke Bianca Caspar Dorian Elodie "
    "Farah Gemma Henrik Imre Jarek Kenji Lucien Magnus Noemi Oren Priya Ravi Saoirse "
    "Tobias Ugo Valentina Wendell Yannick Zofia")

SURNAMES = _words(
    "Abbott Achebe Alvarez Andersen Arden Ashby Baines Barlow Beck Bellamy Blackwood "
    "Bosch Brandt Calloway Carver Castellano Chandra Coburn Crane Dalton Delacroix "
    "Draper Dunmore Eastwood Ellison Engel Falk Farrow Fenwick Fischer Fontaine Garrow "
    "Greer Gunnarsson Hadley Halloran Hartmann Hawthorne Ibsen Ingram Iverson Jansen "
    "Jovanovic Kagame Kellerman Kessler Kowalski Lachance Lindqvist Lowell Lund "
    "Marchetti Mercer Moreau Mulligan Nakamura Novak Nyberg Okafor Olsen Ortega Pagani "
    "Pemberton Petrov Quill Radcliffe Ramires Reyes Rourke Salazar Sandoval Schultz "
    "Sorensen Stavros Strand Takahashi Thorne Torres Underwood Valdez Vance Varga "
    "Voss Wakefield Waller Weston Whitcombe Winslow Yilmaz Yoshida Zeller Zamora "
    "Bergstrom Cardenas Dimitriou Eklund Ferreira Grimaldi Holm Ishikawa Kovac "
    "Lombardi Mendel Nakashima Oyelaran Pires Quintero Rasmussen Szabo Tanaka Ulrich "
    "Vasquez Wojcik Xu Zhao")

# Film titles: "The {adjective} {noun}", "{noun} of {noun}", ...
TITLE_ADJECTIVES = _words(
    "Silent Hidden Last Crimson Distant Frozen Golden Iron Burning Lost Quiet "
    "Scarlet Broken Endless Northern Southern Wild Secret Midnight Forgotten Paper "
    "Glass Salt Copper Velvet Amber Autumn Winter Summer Electric Restless Sleeping "
    "Falling Rising Second Seventh Lonely Open Narrow Painted Drowned "
    "Hungry Bitter Pale Tender Savage Invisible Borrowed Stolen Final Little")
TITLE_NOUNS = _words(
    "Harbor River Mountain Garden Mirror Orchard Lantern Empire Kingdom Shadow Signal "
    "Horizon Station Island Valley Tide Storm Frontier Circus Letter Compass Engine "
    "Archive Bridge Lighthouse Desert Winter Parade Ballad Window Tower Forest Orchid "
    "Machine Canyon Coast Meridian Fortress Carnival Voyage Sparrow Falcon Wolf Fox "
    "Raven Horse Whale Anchor Crown Dagger Map Key Door Clock Ocean Moon Sun Star "
    "Comet Atlas Labyrinth Cathedral Village City Road Railway Season Summer Dynasty")

GENRES = _phrases(
    "drama | comedy | thriller | horror film | western | musical | documentary | "
    "romance | science fiction film | war film | mystery | animated feature | "
    "crime drama | biopic | fantasy epic | heist film | sports drama | period piece | "
    "road movie | satire | film noir | coming-of-age story | apocalypse movie | "
    "spy thriller | courtroom drama | family film | psychological thriller | "
    "romantic comedy | survival story | political drama")

ASPECTS = _phrases(
    "acting | plot | script | dialogue | pacing | cinematography | score | soundtrack | "
    "editing | direction | ending | opening | characters | lead performance | "
    "supporting cast | visual effects | production design | costumes | humor | tension | "
    "atmosphere | world building | story | premise | climax | villain | camera work | "
    "lighting | sound design | chemistry between the leads | final act | screenplay | "
    "set pieces | action scenes | central mystery | emotional core | period detail")

OCCUPATIONS = _phrases(
    "lighthouse keeper | retired detective | young nurse | ship captain | schoolteacher | "
    "jazz pianist | firefighter | botanist | carpenter | war photographer | chef | "
    "astronaut | lawyer | journalist | farmer | widowed baker | librarian | miner | "
    "stage actor | boxer | surgeon | cartographer | beekeeper | mechanic | translator | "
    "taxi driver | architect | diplomat | fisherman | priest | smuggler | violinist | "
    "archaeologist | bookseller | clockmaker | park ranger | radio host | street magician | "
    "student | detective | soldier | forger | painter | sailor | pilot | teacher | nun | "
    "engineer | reporter | gardener | tailor | shepherd | locksmith | postman | novelist | "
    "banker | dancer | courier | inventor | ferryman | midwife | geologist | potter")

PLACES = _phrases(
    "a fishing village | Lisbon | a Nordic island | Marseille | the Scottish highlands | "
    "a Mongolian steppe | Naples | a Canadian logging town | Buenos Aires | a desert outpost | "
    "Osaka | a mountain monastery | Cape Town | a Baltic port | Havana | a mining town | "
    "Istanbul | a floating city | Reykjavik | the Amazon basin | a border town | Vienna | "
    "a research station in Antarctica | Kyoto | a coastal resort | Prague | Mumbai | "
    "a small farm in Iowa | Berlin | a lunar colony | Dublin | Seoul | Tangier | Oslo | "
    "an abandoned theme park | a crowded tenement | a traveling circus | a cargo ship | "
    "a boarding school | a royal court | a hospital ward | a late night diner")

PLOTS = _phrases(
    "searches for a missing brother | inherits a crumbling hotel | "
    "tries to win back an estranged daughter | uncovers a conspiracy at the docks | "
    "plans one last robbery | trains for a championship fight | "
    "hides a fugitive in the attic | races to finish a symphony | "
    "investigates a string of disappearances | falls for a rival | "
    "escapes from a prison camp | returns home after twenty years | "
    "smuggles books across the border | fights to keep the family farm | "
    "leads a strike at the factory | guards a secret map | "
    "builds a flying machine | solves a murder on a night train | "
    "crosses the ocean in a small boat | runs for mayor | "
    "tracks a wolf through the winter | restores an old cinema | "
    "takes in an orphan | confronts a corrupt sheriff | "
    "discovers a signal from deep space | cares for a dying mentor | "
    "forms a band with strangers | searches for a sunken ship | "
    "protects a witness | rebuilds a town after a flood | "
    "chases a forger across Europe | teaches a village to read | "
    "survives a week in the mountains | keeps a dangerous promise")

EVENTS = _phrases(
    "a storm cuts the town off | a letter arrives from the past | "
    "the factory closes | a stranger comes to town | a war breaks out | "
    "the river floods | an old friend is arrested | a fortune goes missing | "
    "the power fails across the city | a child goes missing | "
    "a rival company moves in | the harvest fails | a body is found in the lake | "
    "the ship loses its engine | an election turns violent")

MEETS = _phrases(
    "a stubborn mule driver | a mysterious radio operator | an old flame | "
    "a chess prodigy | a runaway heiress | a talking parrot | a disgraced scientist | "
    "a lonely widower | a pair of con artists | a retired spy | a traveling salesman | "
    "a teenage runaway | a rival reporter | a former soldier | a wandering musician")

COMPANIONS = _phrases(
    "my sister | my brother | my father | my mother | my partner | my roommate | "
    "my grandmother | my friends | my kids | a colleague | my book club | my neighbor")

AUDIENCES = _phrases(
    "anyone who likes a patient story | fans of the genre | families | "
    "patient viewers | history buffs | anyone with a free evening | "
    "fans of the director | people who love music | younger viewers | "
    "anyone who enjoys a puzzle | die hard fans | casual viewers")

WEEKDAYS = _words("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")
VENUES = _phrases(
    "at a festival screening | at the local cinema | on a long flight | at home | "
    "at a drive-in | at a midnight screening | on a rainy afternoon | at a preview screening")

# Compound surnames ("Ashford", "Greenwell"): hundreds of English-like names.
SURNAME_STEMS = _words(
    "Ash Black Brook Green White Hill Stone Wood Fair Oak Elm Hart Moor Row Cole Bram "
    "Thorn Shel Hol Wen Lang Bran Pen Mar Ald Brad Chad Dun Fern Hal Kings Lock Mil "
    "Nor Red Sal Sand Stan Wolf Cran Went Whit Buck Cliff Hay Lin")
SURNAME_ENDINGS = _words(
    "ford field well wood by ton ley more worth ham wick stead burn dale bridge combe "
    "hurst land mere shaw thorpe wright stow gate")

THEMES = _phrases(
    "grief | memory | ambition | loyalty | faith | greed | exile | migration | "
    "friendship | betrayal | guilt | forgiveness | class | power | freedom | identity | "
    "family | motherhood | fatherhood | aging | youth | revenge | justice | obsession | "
    "solitude | belonging | inheritance | sacrifice | duty | survival | trust | pride | "
    "jealousy | courage | fear | curiosity | tradition | progress | labor | wealth | "
    "poverty | faithlessness | distance | home | time | chance | fate | honesty | secrecy")

SCENE_ACTIONS = _phrases(
    "repairs a radio in the rain | argues with a landlord | reads letters by candlelight | "
    "rows across a harbor at dawn | plays cards with a stranger | digs up an old trunk | "
    "waits at a bus stop | climbs a bell tower | feeds pigeons on a rooftop | "
    "plays at a wedding | burns a photograph | sketches a portrait | "
    "chases a train across a bridge | hides in a wardrobe | dances in an empty hall | "
    "fixes a bicycle chain | counts coins at a kitchen table | walks through a market | "
    "paints a fence | cooks dinner for twelve | mends a fishing net | "
    "listens to a record | writes a confession | opens a locked drawer | "
    "crosses a frozen lake | sells a watch | plants a tree | shaves in a cracked mirror | "
    "lights a lantern | carries a cello up the stairs | teaches a parrot a word | "
    "builds a raft | sorts mail at night | sweeps the floor of a chapel")

OBJECTS = _words(
    "umbrella typewriter lantern violin suitcase telescope compass kettle hourglass "
    "bicycle gramophone locket pocketwatch candlestick ledger postcard helmet rifle "
    "scarf teacup ribbon anchor parcel notebook passport trumpet accordion wheelbarrow "
    "chessboard fountain pen telegram harmonica sextant camera projector tractor canoe "
    "kite ladder blanket lamp mirror piano shovel sword tapestry trophy wagon")

TECHNICAL = _phrases(
    "shot on sixteen millimeter film | shot in black and white | filmed on location | "
    "made on a tight budget | shot over forty days | filmed with natural light | "
    "told in three chapters | told in flashbacks | shot mostly at night | "
    "presented in a square frame | scored by a small string ensemble | "
    "cut together from long takes | narrated by an older version of the hero")

"""Regenerate the bundled sample assets under ``assets/``.

Writes a handful of sample photos (from scikit-image and scikit-learn sample data),
three small PDFs with a real text layer, and ``questions.json``, whose questions each
have one page as their answer. The output is deterministic: running the script twice
gives the same bytes.

Usage: ``python scripts/make_assets.py``
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pymupdf
from PIL import Image
from skimage import data as skdata
from sklearn.datasets import load_sample_image

ASSETS = Path(__file__).resolve().parent.parent / "assets"

PHOTO_LONG_SIDE = 512
JPEG_QUALITY = 85
PDF_DATE = "D:20180301090000Z"

PAGE_WIDTH, PAGE_HEIGHT = 595, 842  # A4 in points
MARGIN = 56
BLOCK_GAP = 12

CSS = """
body { font-family: sans-serif; font-size: 11pt; line-height: 1.35; color: #222; }
h1 { font-size: 20pt; color: #1a3c6e; margin-bottom: 4pt; }
h2 { font-size: 13pt; color: #1a3c6e; margin-top: 6pt; margin-bottom: 2pt; }
p { margin-top: 0; margin-bottom: 6pt; text-align: justify; }
.kicker { font-size: 9pt; color: #777; text-transform: uppercase; }
.caption { font-size: 9pt; font-style: italic; color: #444; text-align: center; }
table { border-collapse: collapse; margin-top: 4pt; margin-bottom: 8pt; }
th, td { border: 1px solid #666; padding: 3pt 7pt; text-align: right; }
th { background-color: #dfe6f0; }
th.label, td.label { text-align: left; }
"""

# Sample photos by asset name. All are public domain / CC0 except the two scikit-learn
# photos (CC BY 2.0, attribution in assets/README.md and in the captions).
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": skdata.astronaut,
    "cat": skdata.chelsea,
    "coffee": skdata.coffee,
    "rocket": skdata.rocket,
    "hubble_deep_field": skdata.hubble_deep_field,
    "coins": skdata.coins,
    "summer_palace": lambda: load_sample_image("china.jpg"),
    "dahlia": lambda: load_sample_image("flower.jpg"),
}


@dataclass(frozen=True)
class Html:
    """A block of HTML text, laid out across the page width."""

    html: str


@dataclass(frozen=True)
class Photo:
    """One of PHOTOS, centred and ``height`` points tall, with a caption below."""

    name: str
    caption: str
    height: float = 250


@dataclass(frozen=True)
class BarChart:
    """A vector bar chart of ``values`` with a caption below."""

    values: dict[str, float]
    unit: str
    caption: str
    height: float = 200


Block = Html | Photo | BarChart


@dataclass(frozen=True)
class Booklet:
    """A sample PDF: its metadata (the title is also the running footer) and its pages."""

    filename: str
    title: str
    author: str
    subject: str
    pages: list[list[Block]]


def photo_jpeg(name: str) -> bytes:
    """Return the named photo, downscaled to PHOTO_LONG_SIDE, as JPEG bytes."""
    image = Image.fromarray(PHOTOS[name]())
    image.thumbnail((PHOTO_LONG_SIDE, PHOTO_LONG_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def without_ligatures(html: str) -> str:
    """Keep "fi", "fl" and "ff" from becoming ligature glyphs in the text layer.

    MuPDF shapes text with HarfBuzz, and ``page.get_text()`` would return a ligature as one
    character (U+FB01 for "fi"), which breaks word matching. An empty span between the two
    letters (outside tags only) prevents the ligature without changing the visible text.
    """
    return re.sub(r"(?<=f)(?=[fil])(?![^<]*>)", "<span></span>", html)


def html_block(page: pymupdf.Page, y: float, html: str) -> float:
    """Lay out ``html`` from ``y`` down; return the y just below it."""
    bottom = PAGE_HEIGHT - MARGIN
    rect = pymupdf.Rect(MARGIN, y, PAGE_WIDTH - MARGIN, bottom)
    spare, _ = page.insert_htmlbox(rect, without_ligatures(html), css=CSS, scale_low=1)
    if spare < 0:
        raise ValueError(f"text does not fit on page {page.number + 1}: {html[:60]!r}")
    return bottom - spare


def photo_block(page: pymupdf.Page, y: float, block: Photo) -> float:
    """Embed a photo with its caption; return the y below the caption."""
    jpeg = photo_jpeg(block.name)
    width, height = Image.open(io.BytesIO(jpeg)).size
    shown_height = block.height
    shown_width = width * shown_height / height
    x0 = (PAGE_WIDTH - shown_width) / 2
    page.insert_image(pymupdf.Rect(x0, y, x0 + shown_width, y + shown_height), stream=jpeg)
    return html_block(page, y + shown_height + 4, f'<p class="caption">{block.caption}</p>')


def centred_text(page: pymupdf.Page, x: float, y: float, text: str, fontsize: float = 9) -> None:
    """Write ``text`` with its baseline at ``y``, centred on ``x``."""
    width = pymupdf.get_text_length(text, fontsize=fontsize)
    page.insert_text((x - width / 2, y), text, fontsize=fontsize)


def chart_block(page: pymupdf.Page, y: float, block: BarChart) -> float:
    """Draw a labelled vertical bar chart with a caption; return the y below the caption."""
    left, right = MARGIN + 40, PAGE_WIDTH - MARGIN - 40
    top, base = y + 28, y + block.height - 18
    slot = (right - left) / len(block.values)
    peak = max(block.values.values())
    page.insert_text((left, y + 8), block.unit, fontsize=8, color=(0.4, 0.4, 0.4))
    page.draw_line((left, base), (right, base), color=(0.3, 0.3, 0.3), width=0.8)
    for i, (label, value) in enumerate(block.values.items()):
        centre = left + (i + 0.5) * slot
        bar_top = base - (base - top) * value / peak
        page.draw_rect(
            pymupdf.Rect(centre - 0.3 * slot, bar_top, centre + 0.3 * slot, base),
            color=None,
            fill=(0.16, 0.33, 0.58),
        )
        centred_text(page, centre, bar_top - 4, f"{value:.1f}")
        centred_text(page, centre, base + 12, label)
    return html_block(page, y + block.height + 4, f'<p class="caption">{block.caption}</p>')


def render_page(page: pymupdf.Page, blocks: list[Block], footer: str) -> None:
    """Lay the blocks out top to bottom and add the running footer."""
    y = MARGIN
    for block in blocks:
        if isinstance(block, Html):
            y = html_block(page, y, block.html)
        elif isinstance(block, Photo):
            y = photo_block(page, y, block)
        else:
            y = chart_block(page, y, block)
        y += BLOCK_GAP
    footer_text = f"{footer} · page {page.number + 1}"
    footer_at = (MARGIN, PAGE_HEIGHT - MARGIN / 2)
    page.insert_text(footer_at, footer_text, fontsize=8, color=(0.5, 0.5, 0.5))


def write_booklet(booklet: Booklet, path: Path) -> None:
    """Write one booklet as a PDF with fixed metadata dates."""
    doc = pymupdf.open()
    for blocks in booklet.pages:
        render_page(doc.new_page(width=PAGE_WIDTH, height=PAGE_HEIGHT), blocks, booklet.title)
    doc.set_metadata(
        {
            "title": booklet.title,
            "author": booklet.author,
            "subject": booklet.subject,
            "creator": "mmrank scripts/make_assets.py",
            "producer": "PyMuPDF",
            "creationDate": PDF_DATE,
            "modDate": PDF_DATE,
        }
    )
    doc.save(path, garbage=4, deflate=True, no_new_id=True)
    doc.close()


def financial_table() -> str:
    """The annual report's table of key figures for 2014 to 2017, as HTML."""
    years = ["2014", "2015", "2016", "2017"]
    rows = {
        "Revenue (£ million)": ["318.4", "341.9", "377.2", "412.6"],
        "Operating profit (£ million)": ["38.2", "44.5", "53.6", "61.9"],
        "Operating margin (%)": ["12.0", "13.0", "14.2", "15.0"],
        "Net income (£ million)": ["27.1", "31.8", "38.9", "45.3"],
        "Earnings per share (pence)": ["41.2", "48.3", "59.0", "68.7"],
        "Research and development (£ million)": ["21.5", "23.9", "27.4", "30.2"],
    }
    header = "".join(f"<th>{year}</th>" for year in years)
    body = "".join(
        f'<tr><td class="label">{label}</td>' + "".join(f"<td>{v}</td>" for v in values) + "</tr>"
        for label, values in rows.items()
    )
    return f'<table><tr><th class="label">Year ended 31 December</th>{header}</tr>{body}</table>'


ANNUAL_REPORT = Booklet(
    filename="brightwater_annual_report_2017.pdf",
    title="Brightwater Instruments plc · Annual Report 2017",
    author="Brightwater Instruments plc",
    subject="Annual report for the year ended 31 December 2017 (fictional sample document)",
    pages=[
        [
            Html(
                '<p class="kicker">Annual Report and Accounts 2017</p>'
                "<h1>Brightwater Instruments plc</h1>"
                "<h2>Letter from the Chief Executive</h2>"
                "<p>Dear shareholders, 2017 was the strongest year in the 55-year history of "
                "Brightwater. The company was founded in 1962 by the physicist Arthur Pell in a "
                "former textile mill in Leeds, England, where our headquarters remain today. What "
                "began as a workshop repairing laboratory balances is now a global maker of "
                "precision measuring instruments.</p>"
                "<p>I joined Brightwater as Chief Executive in March 2015, and I want to thank "
                "every colleague for the work behind this year's record results. Our order book at "
                "the end of the year stood at £126 million, the highest we have ever carried into "
                "a new year, and customer satisfaction reached 91 percent in our annual "
                "survey.</p>"
                "<p>Three things drove the year: demand for our new Aquila spectrometer, which won "
                "the Queen's Award for Enterprise in Innovation, steady growth in calibration "
                "services, and the first full year of production at our factory in Malaysia. The "
                "pages that follow describe our businesses, our finances, our people and our plans "
                "for 2018.</p>"
                "<p>Margaret Okafor<br>Chief Executive Officer<br>Leeds, 28 February 2018</p>"
            )
        ],
        [
            Html(
                "<h1>Where we make our instruments</h1>"
                "<p>Brightwater designs, manufactures and services instruments that measure mass, "
                "light, pressure and temperature, in three divisions: Laboratory (46 percent of "
                "sales), Industrial Sensing (38 percent) and Service (16 percent). Our products "
                "are built in factories in three countries.</p>"
                "<h2>Leeds, United Kingdom</h2>"
                "<p>Our original factory, in a former textile mill by the River Aire, employs "
                "1,150 people and builds analytical balances and the Aquila spectrometers. It also "
                "houses our main research centre.</p>"
                "<h2>Brno, Czech Republic</h2>"
                "<p>Acquired in 2009, the Brno plant makes pressure transmitters and temperature "
                "probes for chemical plants, water utilities and offshore platforms. Its 640 staff "
                "produced 212,000 sensors in 2017.</p>"
                "<h2>Penang, Malaysia</h2>"
                "<p>Our newest factory opened in September 2016 and reached full production in "
                "2017. It assembles high-volume products for customers in Asia.</p>"
                "<p>Calibration and repair are carried out in 14 accredited service centres around "
                "the world.</p>"
            )
        ],
        [
            Html(
                "<h1>Financial summary 2014 to 2017</h1>"
                "<p>The table below sets out the group's key financial figures for the four years "
                "to 31 December 2017. Revenue grew by 9.4 percent in 2017 and has risen by roughly "
                "30 percent since 2014. Operating profit is stated before exceptional items; "
                "operating margin is operating profit as a percentage of revenue.</p>"
            ),
            Html(financial_table()),
            Html(
                "<p>Profitability has improved every year, helped by a richer product mix, higher "
                "factory utilisation and tight control of overheads. Spending on research and "
                "development stayed at about seven percent of revenue. Basic earnings per share "
                "rose by 16 percent in 2017.</p>"
            ),
        ],
        [
            Html(
                "<h1>Revenue by region</h1>"
                "<p>Europe remains our home market, but most of our growth now comes from outside "
                "it. Figure 1 shows where our customers were in 2017.</p>"
            ),
            BarChart(
                values={
                    "Europe": 168.3,
                    "North America": 121.7,
                    "Asia-Pacific": 94.2,
                    "Rest of world": 28.4,
                },
                unit="£ million",
                caption="Figure 1. Group revenue by customer region in 2017, in £ million "
                "(total £412.6 million).",
            ),
            Html(
                "<p>Asia-Pacific was the fastest-growing region, with sales up 18 percent, driven "
                "by semiconductor and battery manufacturers in South Korea and Taiwan. We opened a "
                "sales and demonstration office in Singapore in April. North American sales rose 7 "
                "percent, helped by a multi-year calibration contract with a large water utility "
                "in Texas. In Europe, sales grew 5 percent, with Germany overtaking the United "
                "Kingdom as our largest single country market.</p>"
            ),
        ],
        [
            Html(
                "<h1>People and sustainability</h1>"
                "<h2>Our people</h2>"
                "<p>At the end of 2017 Brightwater employed 2,840 people in 23 countries, of whom "
                "31 percent are women. We took on 45 new engineering apprentices, and our staff "
                "turnover fell to 8.2 percent. The lost-time injury rate across our sites was 0.18 "
                "per 100,000 hours worked, the lowest on record.</p>"
                "<h2>Climate and environment</h2>"
                "<p>We have cut our greenhouse gas emissions by 22 percent since 2014, measured in "
                "tonnes of carbon dioxide equivalent per million pounds of revenue. A 1.2 megawatt "
                "solar array on the roof of our Leeds building came into service in June, and 64 "
                "percent of the electricity we use now comes from renewable sources. Our target is "
                "net-zero emissions from our own operations by 2030.</p>"
                "<h2>Communities</h2>"
                "<p>Employees volunteered 6,100 hours in local schools and charities, and the "
                "Brightwater Foundation funded 120 science scholarships for students in Leeds and "
                "Brno.</p>"
            )
        ],
        [
            Html(
                "<h1>Outlook and shareholder information</h1>"
                "<h2>Dividend</h2>"
                "<p>The Board recommends a final dividend of 14.5 pence per share, bringing the "
                "total dividend for 2017 to 21.0 pence, an increase of 12 percent. Subject to "
                "approval, it will be paid on 25 May 2018 to shareholders on the register on 20 "
                "April 2018.</p>"
                "<h2>Annual General Meeting</h2>"
                "<p>The Annual General Meeting will be held at 11:00 on Thursday 17 May 2018 at "
                "the Royal Armouries Museum, Leeds.</p>"
                "<h2>Outlook for 2018</h2>"
                "<p>We expect another year of growth. Our priorities are to double the output of "
                "the Penang plant, launch the second-generation Aquila spectrometer in the autumn, "
                "and complete the move of our enterprise software to a single system. The main "
                "risks we watch are exchange rates, the supply of electronic components and the "
                "outcome of the United Kingdom's negotiations to leave the European Union.</p>"
            )
        ],
    ],
)

SPACE_GUIDE = Booklet(
    filename="space_exploration_field_guide.pdf",
    title="Beyond the Sky: A Field Guide to Space Exploration",
    author="mmrank sample assets",
    subject="A booklet about rockets, astronauts and space telescopes (sample document)",
    pages=[
        [
            Html(
                "<h1>Getting to orbit</h1>"
                "<p>To stay in orbit just above the atmosphere, a spacecraft must travel sideways "
                "at about 7.8 kilometres per second, more than twenty times the speed of sound. "
                "Only rockets can reach that speed, by burning propellant and throwing the exhaust "
                "backwards.</p>"
            ),
            Photo(
                "rocket",
                "A SpaceX Falcon 9 rocket stands on its launch pad at Cape Canaveral, Florida, "
                "before a night launch in 2015. Photo: SpaceX (public domain).",
            ),
            Html(
                "<p>The Falcon 9 is a two-stage rocket about 70 metres tall. Its first stage is "
                "powered by nine Merlin engines burning kerosene and liquid oxygen; the second "
                "stage uses a single Merlin engine adapted for vacuum. After separation, the "
                "first-stage booster flips around, relights its engines and lands upright on a "
                "drone ship at sea or a pad near the coast, so it can be flown again. The first "
                "successful landing came in December 2015.</p>"
            ),
        ],
        [
            Html("<h1>Astronauts: Eileen Collins</h1>"),
            Photo(
                "astronaut",
                "Eileen Collins in her orange launch-and-entry suit. Photo: NASA (public domain).",
                height=260,
            ),
            Html(
                "<p>Eileen Collins was a U.S. Air Force test pilot before she joined NASA's "
                "astronaut corps. In February 1995 she became the first woman to pilot a space "
                "shuttle, flying Discovery on mission STS-63 to a rendezvous with the Russian "
                "space station Mir.</p>"
                "<p>In July 1999 she became the first woman to command a shuttle mission, STS-93 "
                "on Columbia, which deployed the Chandra X-ray Observatory. She flew four missions "
                "in all and retired in 2006, having spent 38 days, 8 hours and 10 minutes in "
                "space.</p>"
            ),
        ],
        [
            Html("<h1>The Hubble Deep Field</h1>"),
            Photo(
                "hubble_deep_field",
                "The Hubble eXtreme Deep Field, released in September 2012. Almost every speck of "
                "light is a galaxy. Image: NASA and ESA (public domain).",
                height=270,
            ),
            Html(
                "<p>The Hubble Space Telescope was carried into orbit by the shuttle Discovery in "
                "April 1990. It circles the Earth about 540 kilometres up, above the blurring of "
                "the atmosphere, and collects light with a mirror 2.4 metres across.</p>"
                "<p>In 1995 astronomers pointed Hubble at a tiny, seemingly empty patch of sky in "
                "the constellation Ursa Major for ten days. The picture revealed about 3,000 "
                "galaxies. The eXtreme Deep Field combines ten years of exposures of an even "
                "smaller region and shows about 5,500 galaxies, some of them seen as they were "
                "13.2 billion years ago.</p>"
            ),
        ],
        [
            Html(
                "<h1>Footprints on the Moon</h1>"
                "<p>The Moon is our nearest neighbour, on average 384,400 kilometres from the "
                "Earth. On 20 July 1969 the Apollo 11 lunar module Eagle landed in the Sea of "
                "Tranquility, and Neil Armstrong and Buzz Aldrin became the first people to walk "
                "on another world while Michael Collins orbited above them.</p>"
                "<p>Between 1969 and 1972 six Apollo missions landed twelve astronauts on the "
                "lunar surface. Together they brought back 382 kilograms of Moon rock, core "
                "samples and dust, which are still studied today. The samples showed that the Moon "
                "probably formed from debris thrown out when a Mars-sized body collided with the "
                "young Earth.</p>"
                "<p>No one has walked on the Moon since Apollo 17 in December 1972. NASA's Artemis "
                "programme plans to return astronauts to the lunar south pole, where ice in "
                "permanently shadowed craters could one day supply water and rocket fuel.</p>"
            )
        ],
        [
            Html(
                "<h1>Living on the International Space Station</h1>"
                "<p>The International Space Station has been continuously occupied since November "
                "2000. It orbits about 400 kilometres above the Earth and completes one lap of the "
                "planet every 92 minutes, so its crew sees about 16 sunrises and 16 sunsets every "
                "day.</p>"
                "<p>A typical crew has seven people from the United States, Russia, Europe, Japan "
                "and Canada. In weightlessness, muscles and bones weaken, so each astronaut "
                "exercises for about two hours a day on a treadmill, a stationary bicycle and a "
                "resistance machine.</p>"
                "<p>Water is precious: the station's life-support system recycles about 98 percent "
                "of the water on board, including sweat and urine, into clean drinking water. Food "
                "arrives on cargo ships, and fresh fruit is a treat saved for the first days after "
                "a delivery.</p>"
            )
        ],
    ],
)

COFFEE_BOOKLET = Booklet(
    filename="slow_mornings_coffee_and_cats.pdf",
    title="Slow Mornings: A Little Book of Coffee, Cats and Gardens",
    author="mmrank sample assets",
    subject="A booklet about coffee, a café cat, a terrace garden and tea (sample document)",
    pages=[
        [
            Html(
                "<h1>Where coffee comes from</h1>"
                "<p>Legend says coffee was discovered in the highlands of Ethiopia by a goat "
                "herder named Kaldi, who noticed that his goats danced all night after eating the "
                "red berries of a certain shrub. By the fifteenth century, Sufi monks in Yemen "
                "were roasting and brewing the seeds to stay awake during night-time prayers.</p>"
                "<p>Almost all the coffee we drink comes from two species. Arabica grows at high "
                "altitude and gives sweet, aromatic cups; robusta is hardier, more bitter and "
                "contains roughly twice as much caffeine. Coffee trees thrive in the so-called "
                "bean belt between the Tropics of Cancer and Capricorn.</p>"
                "<p>No country grows more coffee than Brazil, which harvests about a third of the "
                "world's crop, followed by Vietnam, Colombia and Indonesia. A single tree yields "
                "only about half a kilogram of roasted beans a year.</p>"
            )
        ],
        [
            Html("<h1>Brewing a better cup</h1>"),
            Photo(
                "coffee",
                "A double espresso in a red cup. Photo: Rachel Michetti (CC0).",
                height=210,
            ),
            Html(
                "<p>Good coffee is mostly a matter of ratio, grind, water temperature and time. "
                "Use water just off the boil, between 90 and 96 °C. Weigh your beans: a kitchen "
                "scale is the cheapest upgrade you can make.</p>"
                "<table><tr><th class='label'>Method</th><th>Coffee : "
                "water</th><th>Grind</th><th>Brew time</th></tr>"
                "<tr><td class='label'>Pour-over</td><td>1 : 16</td><td>medium</td><td>3 "
                "minutes</td></tr>"
                "<tr><td class='label'>French press</td><td>1 : 15</td><td>coarse</td><td>4 "
                "minutes</td></tr>"
                "<tr><td class='label'>Espresso</td><td>18 g in, 36 g out</td><td>fine</td><td>25 "
                "to 30 seconds</td></tr>"
                "<tr><td class='label'>Cold brew</td><td>1 : 8</td><td>coarse</td><td>16 "
                "hours</td></tr>"
                "</table>"
            ),
        ],
        [
            Html("<h1>Meet Chelsea, the café cat</h1>"),
            Photo(
                "cat",
                "Chelsea, a tabby cat, keeping watch over the café. Photo: Stefan van der Walt "
                "(CC0).",
                height=220,
            ),
            Html(
                "<p>Chelsea is a tabby who adopted the café as a kitten and now spends her days on "
                "the window seat. Like most cats she sleeps between 12 and 16 hours a day, mostly "
                "in short naps, and purrs at a frequency of about 25 to 150 hertz.</p>"
                "<p>Cat cafés began in Taipei, where the first one opened in 1998, and spread to "
                "Japan and then the rest of the world. Our house rules are simple: never wake a "
                "sleeping cat, do not feed her from the table, and let her come to you.</p>"
            ),
        ],
        [
            Html("<h1>A garden on the terrace</h1>"),
            Photo(
                "dahlia",
                "A peach-coloured dahlia in bloom. Photo: vultilion on Flickr (CC BY 2.0), via "
                "scikit-learn.",
                height=220,
            ),
            Html(
                "<p>Dahlias flower from midsummer until the first frost. Plant the tubers in "
                "spring, once the soil has warmed, in a sunny spot, and pinch out the tips to get "
                "bushier plants. In autumn, lift the tubers and store them somewhere "
                "frost-free.</p>"
                "<p>Used coffee grounds make a gentle compost: they contain about two percent "
                "nitrogen. Mix them into the compost heap rather than spreading a thick layer on "
                "the soil. Be careful with lilies near pets: every part of a lily is poisonous to "
                "cats, even the pollen.</p>"
            ),
        ],
        [
            Html("<h1>Tea at the Summer Palace</h1>"),
            Photo(
                "summer_palace",
                "The Tower of Buddhist Incense above Kunming Lake at the Summer Palace, Beijing. "
                "Photo: danielbuechele on Flickr (CC BY 2.0), via scikit-learn.",
                height=230,
            ),
            Html(
                "<p>A travel note from Beijing. The Summer Palace, an imperial garden of lakes, "
                "pavilions and temples, is a UNESCO World Heritage Site. After climbing Longevity "
                "Hill we stopped in a teahouse for Longjing, the famous green tea from "
                "Hangzhou.</p>"
                "<p>Green tea should be brewed with cooler water than coffee, around 80 °C, for "
                "two to three minutes. A cup of green tea contains roughly 30 milligrams of "
                "caffeine, about a third as much as a cup of filter coffee.</p>"
            ),
        ],
    ],
)

BOOKLETS = [ANNUAL_REPORT, SPACE_GUIDE, COFFEE_BOOKLET]

QUESTIONS: list[tuple[str, str, int]] = [
    ("What was the operating margin in 2016?", ANNUAL_REPORT.filename, 3),
    ("Which factory makes the pressure sensors?", ANNUAL_REPORT.filename, 2),
    ("Which region had the fastest sales growth last year?", ANNUAL_REPORT.filename, 4),
    (
        "When is the annual general meeting and how large is the final dividend?",
        ANNUAL_REPORT.filename,
        6,
    ),
    ("How many engines does the first stage of the Falcon 9 have?", SPACE_GUIDE.filename, 1),
    ("Who was the first woman to command a space shuttle mission?", SPACE_GUIDE.filename, 2),
    ("How many galaxies can be seen in Hubble's deepest image?", SPACE_GUIDE.filename, 3),
    ("How long does the space station take to circle the Earth?", SPACE_GUIDE.filename, 5),
    ("Which country grows the most coffee?", COFFEE_BOOKLET.filename, 1),
    ("How long should cold brew coffee steep?", COFFEE_BOOKLET.filename, 2),
    ("How many hours a day do cats sleep?", COFFEE_BOOKLET.filename, 3),
    ("What water temperature is best for green tea?", COFFEE_BOOKLET.filename, 5),
]


def write_photos(folder: Path) -> None:
    """Write every photo in PHOTOS as ``<name>.jpg``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        (folder / f"{name}.jpg").write_bytes(photo_jpeg(name))


def write_questions(path: Path) -> None:
    """Write QUESTIONS as JSON, with sources relative to ``assets/``."""
    items = [
        {"question": question, "expected": [{"source": f"pdfs/{filename}", "page": page}]}
        for question, filename, page in QUESTIONS
    ]
    path.write_text(json.dumps(items, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    """Regenerate everything under ``assets/`` except its README."""
    write_photos(ASSETS / "images")
    pdf_folder = ASSETS / "pdfs"
    pdf_folder.mkdir(parents=True, exist_ok=True)
    for booklet in BOOKLETS:
        write_booklet(booklet, pdf_folder / booklet.filename)
    write_questions(ASSETS / "questions.json")


if __name__ == "__main__":
    main()
